//! Bytes as an operator reads them.

/// `bytes` as `hexdump -C` shows them: offset, 16 bytes in hex (two groups
/// of 8), and their printable characters.
pub fn hexdump(bytes: &[u8]) -> String {
    let mut out = String::new();
    for (n, chunk) in bytes.chunks(16).enumerate() {
        let mut hex = String::new();
        for (i, byte) in chunk.iter().enumerate() {
            if i == 8 {
                hex.push(' ');
            }
            hex.push_str(&format!("{byte:02x} "));
        }
        let text: String = chunk
            .iter()
            .map(|&b| {
                if b.is_ascii_graphic() || b == b' ' {
                    char::from(b)
                } else {
                    '.'
                }
            })
            .collect();
        out.push_str(&format!("{:04x}  {hex:<49} |{text}|\n", n * 16));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hexdump_shows_offsets_hex_and_text() {
        let dump = hexdump(b"0123456789abcdefXY");
        let lines: Vec<&str> = dump.lines().collect();
        assert_eq!(
            lines[0],
            "0000  30 31 32 33 34 35 36 37  38 39 61 62 63 64 65 66  |0123456789abcdef|"
        );
        assert_eq!(lines[1], format!("0010  58 59{}|XY|", " ".repeat(45)));
        assert_eq!(lines[0].find('|'), lines[1].find('|'), "the text lines up");
    }
}
