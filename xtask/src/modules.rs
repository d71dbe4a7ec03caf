//! `cargo xtask modules`: the import graph between sibling modules, and a
//! failure if it has a circle. Siblings (the children of one module) may
//! use each other one way only: `engine` may use `plumbing`, not also the
//! other way round, and a reader knows where a change belongs. A child may
//! always use its ancestors' own items, and test code is left out.
//!
//! Each file is parsed (syn); every `use` tree and every path in code that
//! starts with `crate`, `super` or `self` is resolved to the module it
//! names.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context, bail};
use syn::{Attribute, UseTree, visit::Visit};

/// The crates whose module graphs are checked, by source directory.
const CRATES: &[&str] = &[
    "agent/src",
    "controller/src",
    "agentctl/src",
    "types/src",
    "ebpf/datapath/src",
];

/// A module's path from its crate root: `["core", "desired"]`.
type ModulePath = Vec<String>;

pub fn run() -> anyhow::Result<()> {
    let root = crate::util::workspace_root();
    let mut circles = Vec::new();
    for dir in CRATES {
        let graph = Graph::of_crate(&root.join(dir))?;
        let found = graph.circles();
        println!(
            "{dir}: {} modules, {} edges between siblings, {} circles",
            graph.modules.len(),
            graph.edges.values().map(BTreeSet::len).sum::<usize>(),
            found.len()
        );
        for circle in found {
            circles.push(format!("{dir}: {}", circle.join(" -> ")));
        }
    }
    if !circles.is_empty() {
        bail!(
            "import circles between sibling modules:\n{}",
            circles.join("\n")
        );
    }
    Ok(())
}

/// The modules of a crate and who uses whom among siblings.
struct Graph {
    modules: BTreeSet<ModulePath>,
    /// Module → the siblings it uses.
    edges: BTreeMap<ModulePath, BTreeSet<ModulePath>>,
}

impl Graph {
    fn of_crate(src: &Path) -> anyhow::Result<Graph> {
        let files = rust_files(src)?;
        let modules: BTreeSet<ModulePath> = files
            .iter()
            .filter_map(|file| module_path(src, file))
            .collect();
        let mut parsed = Vec::new();
        let mut test_only: Vec<ModulePath> = Vec::new();
        for file in &files {
            let Some(from) = module_path(src, file) else {
                continue;
            };
            let text =
                fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
            let syntax =
                syn::parse_file(&text).with_context(|| format!("parsing {}", file.display()))?;
            let mut paths = Paths::default();
            paths.visit_file(&syntax);
            test_only.extend(paths.test_modules.iter().map(|name| {
                let mut path = from.clone();
                path.push(name.clone());
                path
            }));
            parsed.push((from, paths.found));
        }
        let is_test = |module: &ModulePath| test_only.iter().any(|test| module.starts_with(test));
        let modules: BTreeSet<ModulePath> = modules
            .into_iter()
            .filter(|module| !is_test(module))
            .collect();
        let mut edges: BTreeMap<ModulePath, BTreeSet<ModulePath>> = BTreeMap::new();
        for (from, found) in parsed {
            if is_test(&from) {
                continue;
            }
            for path in found {
                let target = resolve(&from, &path);
                if let Some((user, used)) = sibling_edge(&from, &target, &modules) {
                    edges.entry(user).or_default().insert(used);
                }
            }
        }
        Ok(Graph { modules, edges })
    }

    /// Every circle, as the modules along it (the first repeated at the
    /// end); one per strongly connected set of siblings.
    fn circles(&self) -> Vec<Vec<String>> {
        let mut circles = Vec::new();
        let mut reported: BTreeSet<ModulePath> = BTreeSet::new();
        for start in self.edges.keys() {
            if reported.contains(start) {
                continue;
            }
            if let Some(circle) = self.circle_through(start) {
                reported.extend(circle.iter().cloned());
                let mut names: Vec<String> = circle.iter().map(|m| m.join("::")).collect();
                names.push(names[0].clone());
                circles.push(names);
            }
        }
        circles
    }

    /// A path from `start` back to itself, if there is one (depth first).
    fn circle_through(&self, start: &ModulePath) -> Option<Vec<ModulePath>> {
        let mut stack = vec![(start.clone(), vec![start.clone()])];
        let mut seen = BTreeSet::new();
        while let Some((at, trail)) = stack.pop() {
            for next in self.edges.get(&at).into_iter().flatten() {
                if next == start {
                    return Some(trail);
                }
                if seen.insert(next.clone()) {
                    let mut longer = trail.clone();
                    longer.push(next.clone());
                    stack.push((next.clone(), longer));
                }
            }
        }
        None
    }
}

fn rust_files(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            files.extend(rust_files(&path)?);
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            files.push(path);
        }
    }
    Ok(files)
}

/// The module a file is, or `None` for test files and binaries.
fn module_path(src: &Path, file: &Path) -> Option<ModulePath> {
    let relative = file.strip_prefix(src).ok()?.with_extension("");
    let mut parts: ModulePath = relative
        .iter()
        .map(|part| part.to_string_lossy().into_owned())
        .collect();
    if parts.first().is_some_and(|first| first == "bin") || parts.iter().any(|part| part == "tests")
    {
        return None;
    }
    if matches!(
        parts.last().map(String::as_str),
        Some("mod" | "lib" | "main")
    ) {
        parts.pop();
    }
    Some(parts)
}

/// `path` (its segments, as written) used in module `from`, from the crate
/// root.
fn resolve(from: &ModulePath, path: &[String]) -> ModulePath {
    let mut base: ModulePath = from.clone();
    let mut rest = path;
    match path.first().map(String::as_str) {
        Some("crate") => {
            base.clear();
            rest = &path[1..];
        }
        Some("self") => rest = &path[1..],
        _ => {}
    }
    while rest.first().is_some_and(|segment| segment == "super") {
        base.pop();
        rest = &rest[1..];
    }
    base.extend(rest.iter().cloned());
    base
}

/// The pair of siblings `from` → `target` make, if they are in different
/// children of their deepest common module, and `target`'s is a module.
fn sibling_edge(
    from: &ModulePath,
    target: &ModulePath,
    modules: &BTreeSet<ModulePath>,
) -> Option<(ModulePath, ModulePath)> {
    let common = from.iter().zip(target).take_while(|(a, b)| a == b).count();
    if common >= from.len() || common >= target.len() {
        // Its own module, a descendant's, or an ancestor's items.
        return None;
    }
    let used = target[..=common].to_vec();
    modules
        .contains(&used)
        .then(|| (from[..=common].to_vec(), used))
}

/// The module paths a file uses outside its tests.
#[derive(Default)]
struct Paths {
    found: Vec<Vec<String>>,
    /// Its child modules that exist only for tests (`#[cfg(test)] mod x;`).
    test_modules: Vec<String>,
}

impl Paths {
    fn use_tree(&mut self, prefix: &mut Vec<String>, tree: &UseTree) {
        match tree {
            UseTree::Path(path) => {
                prefix.push(path.ident.to_string());
                self.use_tree(prefix, &path.tree);
                prefix.pop();
            }
            UseTree::Name(name) => {
                let mut path = prefix.clone();
                path.push(name.ident.to_string());
                self.record(path);
            }
            UseTree::Rename(rename) => {
                let mut path = prefix.clone();
                path.push(rename.ident.to_string());
                self.record(path);
            }
            UseTree::Glob(_) => self.record(prefix.clone()),
            UseTree::Group(group) => {
                for tree in &group.items {
                    self.use_tree(prefix, tree);
                }
            }
        }
    }

    fn record(&mut self, path: Vec<String>) {
        let relative = path
            .first()
            .is_some_and(|first| matches!(first.as_str(), "crate" | "super" | "self"));
        if relative {
            self.found.push(path);
        }
    }
}

fn is_test_only(attrs: &[Attribute]) -> bool {
    attrs.iter().any(|attr| {
        attr.path().is_ident("cfg")
            && attr
                .parse_args::<syn::Meta>()
                .is_ok_and(|meta| meta.path().is_ident("test"))
    })
}

impl<'ast> Visit<'ast> for Paths {
    fn visit_item(&mut self, item: &'ast syn::Item) {
        let attrs = match item {
            syn::Item::Mod(item) => &item.attrs,
            syn::Item::Fn(item) => &item.attrs,
            syn::Item::Impl(item) => &item.attrs,
            syn::Item::Use(item) => &item.attrs,
            syn::Item::Struct(item) => &item.attrs,
            syn::Item::Enum(item) => &item.attrs,
            syn::Item::Const(item) => &item.attrs,
            syn::Item::Static(item) => &item.attrs,
            _ => return syn::visit::visit_item(self, item),
        };
        if !is_test_only(attrs) {
            syn::visit::visit_item(self, item);
        } else if let syn::Item::Mod(module) = item {
            self.test_modules.push(module.ident.to_string());
        }
    }

    fn visit_item_use(&mut self, item: &'ast syn::ItemUse) {
        self.use_tree(&mut Vec::new(), &item.tree);
    }

    fn visit_path(&mut self, path: &'ast syn::Path) {
        let segments: Vec<String> = path
            .segments
            .iter()
            .map(|segment| segment.ident.to_string())
            .collect();
        self.record(segments);
        syn::visit::visit_path(self, path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(text: &str) -> ModulePath {
        text.split("::").map(String::from).collect()
    }

    #[test]
    fn paths_resolve_from_the_module_that_uses_them() {
        let from = path("core::goalstate::validate");
        assert_eq!(
            resolve(&from, &path("super::wire::X")),
            path("core::goalstate::wire::X")
        );
        assert_eq!(
            resolve(&from, &path("crate::engine::Engine")),
            path("engine::Engine")
        );
        assert_eq!(
            resolve(&from, &path("self::tests")),
            path("core::goalstate::validate::tests")
        );
    }

    #[test]
    fn only_siblings_make_edges() {
        let modules: BTreeSet<ModulePath> = ["core", "core::desired", "core::status", "engine"]
            .map(path)
            .into();
        let edge = |from: &str, to: &str| sibling_edge(&path(from), &path(to), &modules);
        assert_eq!(
            edge("core::status", "core::desired::DesiredState"),
            Some((path("core::status"), path("core::desired")))
        );
        assert_eq!(
            edge("engine", "core::status::AgentState"),
            Some((path("engine"), path("core")))
        );
        // An ancestor's item, its own, or a name that is no module.
        assert_eq!(edge("core::status", "core::Thing"), None);
        assert_eq!(edge("engine", "engine::Engine"), None);
        assert_eq!(edge("engine", "Thing"), None);
    }

    #[test]
    fn a_circle_is_found_and_a_one_way_graph_has_none() {
        let mut graph = Graph {
            modules: ["a", "b", "c"].map(path).into(),
            edges: BTreeMap::from([
                (path("a"), BTreeSet::from([path("b")])),
                (path("b"), BTreeSet::from([path("c")])),
            ]),
        };
        assert!(graph.circles().is_empty());
        graph.edges.insert(path("c"), BTreeSet::from([path("a")]));
        assert_eq!(graph.circles(), [["a", "b", "c", "a"].map(String::from)]);
    }
}
