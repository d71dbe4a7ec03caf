//! A minimal table of aligned columns for agentctl's human output.

/// How a column's cells line up: text to the left, numbers to the right.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Align {
    Left,
    Right,
}

#[derive(Clone, Copy, Debug)]
pub struct Column {
    header: &'static str,
    align: Align,
}

/// A left-aligned column.
pub fn left(header: &'static str) -> Column {
    Column {
        header,
        align: Align::Left,
    }
}

/// A right-aligned column, for numbers.
pub fn right(header: &'static str) -> Column {
    Column {
        header,
        align: Align::Right,
    }
}

pub struct Table {
    columns: Vec<Column>,
    show_header: bool,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(columns: impl IntoIterator<Item = Column>) -> Table {
        Table {
            columns: columns.into_iter().collect(),
            show_header: true,
            rows: Vec::new(),
        }
    }

    /// A table without a header line, for `key  value` listings.
    pub fn headless(columns: impl IntoIterator<Item = Column>) -> Table {
        Table {
            show_header: false,
            ..Table::new(columns)
        }
    }

    /// Adds a row of one cell per column.
    pub fn row<S: Into<String>>(&mut self, cells: impl IntoIterator<Item = S>) {
        let mut cells: Vec<String> = cells.into_iter().map(Into::into).collect();
        debug_assert_eq!(cells.len(), self.columns.len(), "cells of {cells:?}");
        // Keeps rendering total in release builds.
        cells.resize(self.columns.len(), String::new());
        self.rows.push(cells);
    }

    /// The table as text, columns two spaces apart, one line per row, no
    /// trailing spaces.
    pub fn render(&self) -> String {
        let header: Vec<String> = self.columns.iter().map(|c| c.header.into()).collect();
        let lines: Vec<&Vec<String>> = self
            .show_header
            .then_some(&header)
            .into_iter()
            .chain(&self.rows)
            .collect();
        let widths: Vec<usize> = (0..self.columns.len())
            .map(|i| lines.iter().map(|l| width(&l[i])).max().unwrap_or(0))
            .collect();
        let mut out = String::new();
        for line in lines {
            let mut text = String::new();
            for ((cell, column), width) in line.iter().zip(&self.columns).zip(&widths) {
                if !text.is_empty() {
                    text.push_str("  ");
                }
                let padding = " ".repeat(width - self::width(cell));
                match column.align {
                    Align::Left => text.extend([cell.as_str(), &padding]),
                    Align::Right => text.extend([&padding, cell.as_str()]),
                }
            }
            out.push_str(text.trim_end());
            out.push('\n');
        }
        out
    }
}

/// Display width, counted in characters rather than bytes. Ids and addresses
/// are ASCII; a name with double-width characters only misaligns its own row.
fn width(text: &str) -> usize {
    text.chars().count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_are_as_wide_as_their_widest_cell() {
        let mut table = Table::new([left("ID"), left("PHASE"), right("PACKETS")]);
        table.row(["port-1", "ready", "7"]);
        table.row(["p2", "pending", "1234567"]);
        assert_eq!(
            table.render(),
            "ID      PHASE    PACKETS\n\
             port-1  ready          7\n\
             p2      pending  1234567\n"
        );
    }

    #[test]
    fn last_left_column_has_no_trailing_spaces() {
        let mut table = Table::new([left("A"), left("REASON")]);
        table.row(["x", "waiting for tapabc"]);
        table.row(["y", ""]);
        assert_eq!(table.render(), "A  REASON\nx  waiting for tapabc\ny\n");
    }

    #[test]
    fn headless_table_aligns_values() {
        let mut table = Table::headless([left(""), left("")]);
        table.row(["version", "0.1.0"]);
        table.row(["port MTU", "1450"]);
        assert_eq!(table.render(), "version   0.1.0\nport MTU  1450\n");
    }

    #[test]
    fn multibyte_characters_count_once() {
        let mut table = Table::new([left("NAME"), left("X")]);
        table.row(["réseau", "1"]);
        assert_eq!(table.render(), "NAME    X\nréseau  1\n");
    }
}
