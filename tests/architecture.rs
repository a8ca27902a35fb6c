//! The crate's shape, checked: which top-level module imports which, each
//! only what its `//!` header allows (its `May call:` paragraph names the
//! modules in backticks, or says "nothing else in the crate" or "every
//! module"), with no import cycle between them nor between the files of
//! one folder, and no file or function grown past what a reader can hold
//! in their head.
//!
//! `cargo test --release --test architecture -- --nocapture` prints the
//! module list with line counts, the import graph, the largest files and
//! the longest functions.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Longest function body allowed in `src/`, in lines.
const MAX_FUNCTION_LINES: usize = 80;

/// Longest source file allowed in `src/`, in lines, its unit tests (from
/// `#[cfg(test)]` on) aside.
const MAX_FILE_LINES: usize = 800;

/// The lines of a file that are not its unit tests.
fn code_lines(text: &str) -> usize {
    text.split("\n#[cfg(test)]")
        .next()
        .unwrap_or("")
        .lines()
        .count()
}

/// What a module's header allows it to import: the module names in
/// backticks in its `May call:` paragraph (`queue` or `queue::Spool`
/// both name `queue`); None when it says "every module"; Err when the
/// header has no `May call:`.
fn allowed_imports(text: &str, modules: &BTreeSet<String>) -> Result<Option<BTreeSet<String>>, ()> {
    let header: Vec<&str> = text
        .lines()
        .take_while(|l| l.starts_with("//!"))
        .map(|l| l.trim_start_matches("//!").trim())
        .collect();
    let joined = header.join("\n");
    let start = joined.find("May call:").ok_or(())?;
    let rest = &joined[start + "May call:".len()..];
    let end = [rest.find("Must not:"), rest.find("\n\n")]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(rest.len());
    let paragraph = &rest[..end];
    if paragraph.contains("every module") {
        return Ok(None);
    }
    let named = paragraph
        .split('`')
        .skip(1)
        .step_by(2)
        .filter_map(|quoted| quoted.split("::").next())
        .filter(|name| modules.contains(*name))
        .map(str::to_string)
        .collect();
    Ok(Some(named))
}

/// Every difference between what each module imports and what its header
/// allows: a forbidden import, an allowance it does not use, or a header
/// without `May call:`.
fn header_drift(src: &Path, graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<String> {
    let modules: BTreeSet<String> = graph.keys().cloned().collect();
    let mut found = Vec::new();
    for (module, deps) in graph {
        let file = match src.join(module).is_dir() {
            true => src.join(module).join("mod.rs"),
            false => src.join(format!("{module}.rs")),
        };
        let text = std::fs::read_to_string(&file).unwrap();
        match allowed_imports(&text, &modules) {
            Err(()) => found.push(format!("{module}: its header has no `May call:`")),
            Ok(None) => {}
            Ok(Some(allowed)) => {
                for d in deps.difference(&allowed) {
                    found.push(format!(
                        "{module} imports `{d}`, which its header does not allow"
                    ));
                }
                for a in allowed.difference(deps) {
                    found.push(format!(
                        "{module}'s header allows `{a}`, which it does not import"
                    ));
                }
            }
        }
    }
    found
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file belongs to (`src/queue/segment.rs` ->
/// `queue`), None for the crate root and the binary.
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).unwrap();
    let first = rel.components().next()?.as_os_str().to_str()?.to_string();
    match first.as_str() {
        "lib.rs" | "main.rs" => None,
        name => Some(name.trim_end_matches(".rs").to_string()),
    }
}

/// Every `crate::name` a file mentions outside comments.
fn imports(text: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for line in text.lines() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(i) = rest.find("crate::") {
            let tail = &rest[i + "crate::".len()..];
            let name: String = tail
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                found.insert(name);
            }
            rest = tail;
        }
        // `use crate::{a, b::c}` groups.
        if let Some(group) = code.split("use crate::{").nth(1) {
            for part in group.split(',') {
                let name: String = part
                    .trim()
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() {
                    found.insert(name);
                }
            }
        }
    }
    found
}

/// (function name, file, first line, length in lines) for every `fn`
/// whose body closes at the indentation it opened at.
fn functions(file: &Path, text: &str) -> Vec<(String, String, usize, usize)> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        let after_qualifiers = trimmed
            .trim_start_matches("pub(crate) ")
            .trim_start_matches("pub(super) ")
            .trim_start_matches("pub ")
            .trim_start_matches("const ")
            .trim_start_matches("async ")
            .trim_start_matches("unsafe ");
        let Some(sig) = after_qualifiers.strip_prefix("fn ") else {
            continue;
        };
        let name: String = sig
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        // One-line functions and trait declarations.
        if trimmed.ends_with('}') || trimmed.ends_with(';') {
            continue;
        }
        let close = format!("{}}}", " ".repeat(indent));
        if let Some(end) = lines[i..].iter().position(|l| *l == close) {
            out.push((name, file.display().to_string(), i + 1, end + 1));
        }
    }
    out
}

#[test]
fn modules_import_what_their_headers_allow_without_cycles_and_stay_short() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let src = root.join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();

    let mut lines_per_module: BTreeMap<String, usize> = BTreeMap::new();
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut all_functions = Vec::new();
    let mut file_sizes = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        let rel = file.strip_prefix(root).unwrap();
        all_functions.extend(functions(rel, &text));
        file_sizes.push((code_lines(&text), rel.display().to_string()));
        let Some(module) = module_of(&src, file) else {
            continue;
        };
        *lines_per_module.entry(module.clone()).or_default() += text.lines().count();
        let deps = graph.entry(module.clone()).or_default();
        for name in imports(&text) {
            if name != module {
                deps.insert(name);
            }
        }
    }
    let modules: BTreeSet<String> = graph.keys().cloned().collect();
    for deps in graph.values_mut() {
        deps.retain(|d| modules.contains(d));
    }

    println!("modules (lines) and what each imports:");
    for (module, deps) in &graph {
        let deps: Vec<&str> = deps.iter().map(String::as_str).collect();
        println!(
            "  {module:<12} {:>5}  -> {}",
            lines_per_module[module],
            deps.join(", ")
        );
    }
    file_sizes.sort_by_key(|f| std::cmp::Reverse(f.0));
    println!("largest files (lines, unit tests aside):");
    for (lines, file) in file_sizes.iter().take(8) {
        println!("  {lines:>5}  {file}");
    }
    all_functions.sort_by_key(|f| std::cmp::Reverse(f.3));
    println!("longest functions:");
    for (name, file, line, len) in all_functions.iter().take(8) {
        println!("  {len:>4} lines  {file}:{line} {name}");
    }

    let cycles = find_cycles(&graph);
    assert!(
        cycles.is_empty(),
        "import cycles between modules: {cycles:?}"
    );
    let in_folders = folder_cycles(&files);
    assert!(
        in_folders.is_empty(),
        "import cycles between the files of a folder: {in_folders:?}"
    );
    let drift = header_drift(&src, &graph);
    assert!(
        drift.is_empty(),
        "imports and `//!` headers disagree:\n  {}",
        drift.join("\n  ")
    );
    let too_big: Vec<_> = file_sizes.iter().filter(|f| f.0 > MAX_FILE_LINES).collect();
    assert!(
        too_big.is_empty(),
        "files over {MAX_FILE_LINES} lines (unit tests aside): {too_big:?}"
    );
    let too_long: Vec<_> = all_functions
        .iter()
        .filter(|f| f.3 > MAX_FUNCTION_LINES)
        .collect();
    assert!(
        too_long.is_empty(),
        "functions over {MAX_FUNCTION_LINES} lines: {too_long:?}"
    );
}

/// Every cycle found by a depth-first walk, as the modules on it.
fn find_cycles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    fn walk(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        stack: &mut Vec<String>,
        done: &mut BTreeSet<String>,
        cycles: &mut Vec<Vec<String>>,
    ) {
        if let Some(at) = stack.iter().position(|n| n == node) {
            cycles.push(stack[at..].to_vec());
            return;
        }
        if done.contains(node) {
            return;
        }
        stack.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            walk(next, graph, stack, done, cycles);
        }
        stack.pop();
        done.insert(node.to_string());
    }
    let mut cycles = Vec::new();
    let mut done = BTreeSet::new();
    for node in graph.keys() {
        walk(node, graph, &mut Vec::new(), &mut done, &mut cycles);
    }
    cycles
}

/// The sibling files (not `mod.rs`) of one folder a file imports: by
/// `super::name`, `use super::{name, ...}` or `crate::folder::name`.
fn sibling_imports(text: &str, folder: &str, siblings: &BTreeSet<String>) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut add = |tail: &str| {
        let name: String = tail
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if siblings.contains(&name) {
            found.insert(name);
        }
    };
    let own = format!("crate::{folder}::");
    for line in text.lines() {
        let code = line.split("//").next().unwrap_or("");
        for prefix in ["super::", own.as_str()] {
            let mut rest = code;
            while let Some(i) = rest.find(prefix) {
                rest = &rest[i + prefix.len()..];
                match rest.strip_prefix('{') {
                    Some(group) => {
                        for part in group.split(['}', ','].as_ref()) {
                            add(part.trim());
                        }
                    }
                    None => add(rest),
                }
            }
        }
    }
    found
}

/// Cycles between the files of each folder of `src/` (a file and its
/// folder's `mod.rs` aside: children use their parent's types), as
/// `folder: [a, b]`.
fn folder_cycles(files: &[PathBuf]) -> Vec<String> {
    let mut folders: BTreeMap<PathBuf, Vec<&PathBuf>> = BTreeMap::new();
    for f in files {
        if f.file_name().is_some_and(|n| n != "mod.rs") {
            folders
                .entry(f.parent().unwrap().to_path_buf())
                .or_default()
                .push(f);
        }
    }
    let mut found = Vec::new();
    for (dir, members) in folders {
        let folder = dir.file_name().unwrap().to_string_lossy().to_string();
        if folder == "src" || !dir.join("mod.rs").exists() {
            continue;
        }
        let name = |f: &PathBuf| f.file_stem().unwrap().to_string_lossy().to_string();
        let siblings: BTreeSet<String> = members.iter().map(|f| name(f)).collect();
        let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for f in &members {
            let text = std::fs::read_to_string(f).unwrap();
            // A file's own unit tests (`mod tests { use super::*; }`) are
            // not imports of a sibling.
            let code = text.split("#[cfg(test)]").next().unwrap_or("");
            let mut deps = sibling_imports(code, &folder, &siblings);
            deps.remove(&name(f));
            graph.insert(name(f), deps);
        }
        for cycle in find_cycles(&graph) {
            found.push(format!("{folder}: {cycle:?}"));
        }
    }
    found
}
