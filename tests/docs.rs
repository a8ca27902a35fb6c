//! The documentation kept in step with the code. docs/configuration.md is
//! the reference the config sections generate (`ringpost
//! config-reference`), so a key added to the code without its doc, or a
//! default changed, fails here until the file is made again; likewise the
//! shaping rules' key table in docs/shaping.md. And the
//! README and every page of docs/ are read as a user would follow them:
//! every `ringpost ...` command line names real commands and options
//! (checked against the CLI's own clap definition), every config key
//! named exists in the reference, every API route named is served by a
//! running server, and every relative link (and its #anchor) resolves.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

#[test]
fn docs_configuration_md_is_the_generated_reference() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/configuration.md");
    let file = std::fs::read_to_string(&path).unwrap_or_default();
    let code = ringpost::config::reference_markdown();
    if file == code {
        return;
    }
    let first = file
        .lines()
        .zip(code.lines())
        .position(|(a, b)| a != b)
        .unwrap_or_else(|| file.lines().count().min(code.lines().count()));
    panic!(
        "docs/configuration.md differs from the code's reference from line {}:\n  file: {:?}\n  code: {:?}\n\
         Make it again: cargo run --release -- config-reference > docs/configuration.md",
        first + 1,
        file.lines().nth(first),
        code.lines().nth(first),
    );
}

#[test]
fn docs_shaping_md_holds_the_generated_key_table() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/shaping.md");
    let file = std::fs::read_to_string(&path).unwrap_or_default();
    let table = ringpost::scheduler::shaping::key_table();
    assert!(
        file.contains(&table),
        "docs/shaping.md does not hold the shaping keys' table as the code defines it:\n{table}\n\
         Replace the table with: cargo run --release -- config-reference --shaping"
    );
}

// ---------------------------------------------------------------------
// The README and docs/ kept honest: commands, config keys, API routes and
// links they name must exist.

/// README.md and every page under docs/.
fn pages() -> Vec<(PathBuf, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = vec![root.join("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root.join("docs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    files.extend(docs);
    files
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap();
            (p, text)
        })
        .collect()
}

/// The page's code: lines of indented and fenced blocks, and inline code
/// spans, with the line each is on.
fn code_of(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut fenced = false;
    for (n, line) in text.lines().enumerate() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced || line.starts_with("    ") {
            out.push((n + 1, line.trim().to_string()));
            continue;
        }
        for (i, span) in line.split('`').enumerate() {
            if i % 2 == 1 {
                out.push((n + 1, span.to_string()));
            }
        }
    }
    out
}

/// The words of a `ringpost ...` command line in `code`, if it is one:
/// `ringpost`, `./target/release/ringpost` or `cargo run --release --`,
/// up to a comment, a pipe or a redirection.
fn command_words(code: &str) -> Option<Vec<String>> {
    let code = code.trim_start_matches("$ ");
    let rest = [
        "ringpost ",
        "./target/release/ringpost ",
        "cargo run --release -- ",
    ]
    .iter()
    .find_map(|p| code.strip_prefix(p))?;
    let end = [" #", " | ", " < ", " > ", " && ", ";"]
        .iter()
        .filter_map(|s| rest.find(s))
        .min()
        .unwrap_or(rest.len());
    let words: Vec<String> = rest[..end].split_whitespace().map(str::to_string).collect();
    let first = words.first()?;
    // Output lines ("ringpost sink: listening ...") and prose are not commands.
    let is_word =
        first.starts_with('-') || first.chars().all(|c| c.is_ascii_lowercase() || c == '-');
    (is_word && !rest[..end].contains('<')).then_some(words)
}

/// Checks one command line against the real CLI: every subcommand exists
/// (each of `a|b` alternatives), every `--option` exists for the command
/// it follows (or as a global option of a parent), and a value given for
/// an option with fixed values is one of them. Placeholders (FILE, N)
/// are not checked.
fn check_command(root: &clap::Command, words: &[String]) -> Result<(), String> {
    let mut path: Vec<&clap::Command> = vec![root];
    let mut i = 0;
    while i < words.len() {
        let word = words[i].trim_matches(|c| matches!(c, '[' | ']' | '(' | ')' | ','));
        i += 1;
        let cmd = *path.last().unwrap();
        if word.is_empty() || word.starts_with("...") {
            continue;
        }
        if let Some(long) = word.strip_prefix("--") {
            let (name, inline) = match long.split_once('=') {
                Some((n, v)) => (n, Some(v)),
                None => (long, None),
            };
            if name == "help" || name == "version" {
                continue;
            }
            let arg = path
                .iter()
                .rev()
                .enumerate()
                .flat_map(|(depth, c)| {
                    c.get_arguments()
                        .filter(move |a| depth == 0 || a.is_global_set())
                })
                .find(|a| a.get_long() == Some(name))
                .ok_or_else(|| format!("`{}` has no option --{name}", cmd.get_name()))?;
            if !arg.get_action().takes_values() {
                continue;
            }
            let value = match inline {
                Some(v) => Some(v.to_string()),
                None if i < words.len() && !words[i].starts_with('-') => {
                    i += 1;
                    Some(
                        words[i - 1]
                            .trim_matches(|c| matches!(c, '[' | ']'))
                            .to_string(),
                    )
                }
                None => None,
            };
            let allowed: Vec<String> = arg
                .get_possible_values()
                .iter()
                .map(|v| v.get_name().to_string())
                .collect();
            if let Some(value) = value.filter(|_| !allowed.is_empty()) {
                for v in value
                    .split('|')
                    .filter(|v| v.chars().all(|c| c.is_ascii_lowercase() || c == '-'))
                {
                    if !allowed.contains(&v.to_string()) {
                        return Err(format!("--{name} {v}: not one of {allowed:?}"));
                    }
                }
            }
            continue;
        }
        if cmd.has_subcommands() {
            let mut found = Vec::new();
            for alternative in word.split('|') {
                let sub = cmd.find_subcommand(alternative).ok_or_else(|| {
                    format!("`{}` has no subcommand `{alternative}`", cmd.get_name())
                })?;
                found.push(sub);
            }
            if found.len() > 1 {
                // Each alternative with the rest of the line.
                for sub in &found[1..] {
                    let mut line: Vec<String> =
                        path[1..].iter().map(|c| c.get_name().to_string()).collect();
                    line.push(sub.get_name().to_string());
                    line.extend(words[i..].iter().cloned());
                    check_command(root, &line)?;
                }
            }
            path.push(found[0]);
        }
        // Otherwise a positional argument or a placeholder.
    }
    Ok(())
}

#[test]
fn every_command_line_in_the_docs_names_real_commands_and_options() {
    use clap::CommandFactory;
    let root = ringpost::cli::Cli::command();
    let mut checked = 0;
    let mut problems = Vec::new();
    for (path, text) in pages() {
        for (line, code) in code_of(&text) {
            let Some(words) = command_words(&code) else {
                continue;
            };
            checked += 1;
            if let Err(e) = check_command(&root, &words) {
                problems.push(format!("{}:{line}: `{code}`: {e}", path.display()));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "stale command lines:\n{}",
        problems.join("\n")
    );
    assert!(
        checked > 50,
        "only {checked} command lines found: is the extraction broken?"
    );
    println!("{checked} command lines checked");
}

/// Every section and key of the config reference.
fn config_keys() -> BTreeMap<String, BTreeSet<String>> {
    let mut keys: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut section = String::new();
    for line in ringpost::config::reference_markdown().lines() {
        if let Some(name) = line
            .strip_prefix("## `[")
            .and_then(|l| l.strip_suffix("]`"))
        {
            section = name.to_string();
            keys.entry(section.clone()).or_default();
        } else if let Some((key, _)) = line
            .strip_prefix("| `")
            .filter(|_| !section.is_empty())
            .and_then(|rest| rest.split_once('`'))
        {
            keys.get_mut(&section).unwrap().insert(key.to_string());
        }
    }
    keys
}

#[test]
fn every_config_key_in_the_docs_exists() {
    let keys = config_keys();
    assert!(
        keys.len() > 15 && keys["smtp"].contains("relay_networks"),
        "{keys:?}"
    );
    let exists = |section: &str, key: &str| keys.get(section).is_some_and(|k| k.contains(key));
    let mut checked = 0;
    let mut problems = Vec::new();
    for (path, text) in pages() {
        let at = |line: usize| format!("{}:{line}", path.display());
        // `section.key` (and `section.key.field`) in inline code.
        for (line, code) in code_of(&text) {
            let parts: Vec<&str> = code.split('.').collect();
            let plain = parts.len() >= 2
                && parts.iter().all(|p| {
                    !p.is_empty() && p.chars().all(|c| c.is_ascii_lowercase() || c == '_')
                });
            if plain && keys.contains_key(parts[0]) {
                checked += 1;
                if !exists(parts[0], parts[1]) {
                    problems.push(format!(
                        "{}: `{code}`: no key {} in [{}]",
                        at(line),
                        parts[1],
                        parts[0]
                    ));
                }
            }
        }
        // Fenced TOML blocks of the main config: every table a section,
        // every key of it a key of that section.
        for (start, block) in toml_blocks(&text) {
            let Ok(table) = block.parse::<toml::Table>() else {
                problems.push(format!("{}: a toml block that does not parse", at(start)));
                continue;
            };
            if !table.keys().all(|k| keys.contains_key(k)) {
                continue; // a shaping or classifier file
            }
            for (section, value) in &table {
                let Some(inner) = value.as_table() else {
                    continue;
                };
                for key in inner.keys() {
                    checked += 1;
                    if !exists(section, key) {
                        problems.push(format!(
                            "{}: toml block: no key {key} in [{section}]",
                            at(start)
                        ));
                    }
                }
            }
        }
    }
    assert!(
        problems.is_empty(),
        "stale config keys:\n{}",
        problems.join("\n")
    );
    assert!(checked > 50, "only {checked} keys found");
    println!("{checked} config keys checked");
}

fn toml_blocks(text: &str) -> Vec<(usize, String)> {
    let mut blocks = Vec::new();
    let mut current: Option<(usize, String)> = None;
    for (n, line) in text.lines().enumerate() {
        match (&mut current, line.trim_start()) {
            (None, "```toml") => current = Some((n + 1, String::new())),
            (Some(_), "```") => blocks.push(current.take().unwrap()),
            (Some((_, block)), _) => {
                block.push_str(line);
                block.push('\n');
            }
            _ => {}
        }
    }
    blocks
}

/// `METHOD /path` in the docs, with `{a,b}` expanded and the query left out.
fn routes() -> BTreeMap<(String, String), String> {
    let re = regex::Regex::new(r"\b(GET|POST|DELETE|PUT) (/[A-Za-z0-9_./{},:-]*)").unwrap();
    let mut found = BTreeMap::new();
    for (path, text) in pages() {
        for (n, line) in text.lines().enumerate() {
            for c in re.captures_iter(line) {
                let (method, route) = (
                    c[1].to_string(),
                    c[2].trim_end_matches(['.', ',']).to_string(),
                );
                let expanded = match (route.find('{'), route.find('}')) {
                    (Some(a), Some(b)) if a < b => route[a + 1..b]
                        .split(',')
                        .map(|alt| format!("{}{alt}{}", &route[..a], &route[b + 1..]))
                        .collect(),
                    _ => vec![route],
                };
                for r in expanded {
                    found.entry((method.clone(), r)).or_insert(format!(
                        "{}:{}",
                        path.display(),
                        n + 1
                    ));
                }
            }
        }
    }
    found
}

/// One request; the status and body of the answer.
fn request(addr: std::net::SocketAddr, method: &str, path: &str) -> (u16, String) {
    let mut tcp = std::net::TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    write!(
        tcp,
        "{method} {path} HTTP/1.1\r\nHost: test\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    let _ = tcp.read_to_string(&mut answer);
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, answer)
}

#[test]
fn every_api_route_in_the_docs_is_served() {
    let routes = routes();
    assert!(routes.len() > 20, "{routes:?}");
    let tmp = tempfile::tempdir().unwrap();
    let secret = tmp.path().join("unsubscribe.secret");
    std::fs::write(&secret, "a-secret-for-the-links-0123456789abcdef\n").unwrap();
    let ts = common::start_with(1, |c| {
        c.unsubscribe.listen = ringpost::config::Listen::at("127.0.0.1:0");
        c.unsubscribe.base_url = "https://unsub.example.com".into();
        c.unsubscribe.secret_file = secret.display().to_string();
    });
    let mut problems = Vec::new();
    for ((method, route), at) in &routes {
        // Placeholders (ID, NAME, D) become a value; the route must exist
        // whatever the value's fate (400, 404 for an unknown id, 502).
        let path: String = route
            .split('/')
            .map(|seg| {
                match seg.chars().all(|c| c.is_ascii_uppercase() || c == '_') && !seg.is_empty() {
                    true => "example.com",
                    false => seg,
                }
            })
            .collect::<Vec<_>>()
            .join("/");
        let addr = match path.as_str() {
            p if p.starts_with("/api/inject") => ts.inject_addr,
            p if p.starts_with("/u/") => ts.unsubscribe_addr,
            "/metrics" | "/healthz" | "/readyz" => ts.metrics_addr,
            _ => ts.admin_addr,
        }
        .unwrap();
        let (status, answer) = request(addr, method, &path);
        let unrouted = (status == 404
            && (answer.contains("no such path") || answer.ends_with("not found\n")))
            || status == 405
            || status == 0;
        if unrouted {
            problems.push(format!(
                "{at}: {method} {route}: {}",
                answer.lines().next().unwrap_or("no answer")
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "routes not served:\n{}",
        problems.join("\n")
    );
    println!("{} routes checked", routes.len());
}

#[test]
fn every_relative_link_in_the_docs_resolves() {
    let link = regex::Regex::new(r"\]\(([^)\s]+)\)").unwrap();
    let mut problems = Vec::new();
    let mut checked = 0;
    for (path, text) in pages() {
        for (n, line) in text.lines().enumerate() {
            for c in link.captures_iter(line) {
                let target = &c[1];
                if target.contains("://") || target.starts_with("mailto:") {
                    continue;
                }
                checked += 1;
                let (file, anchor) = target.split_once('#').unwrap_or((target, ""));
                let file = match file {
                    "" => path.clone(),
                    f => path.parent().unwrap().join(f),
                };
                let at = format!("{}:{}", path.display(), n + 1);
                if !file.exists() {
                    problems.push(format!("{at}: {target}: no such file"));
                    continue;
                }
                if !anchor.is_empty() {
                    let headings = anchors(&std::fs::read_to_string(&file).unwrap_or_default());
                    if !headings.contains(anchor) {
                        problems.push(format!("{at}: {target}: no heading #{anchor}"));
                    }
                }
            }
        }
    }
    assert!(
        problems.is_empty(),
        "broken links:\n{}",
        problems.join("\n")
    );
    assert!(checked > 20, "only {checked} links");
    println!("{checked} links checked");
}

/// GitHub's anchors of a Markdown file's headings: lower case, spaces to
/// dashes, punctuation other than `-` and `_` dropped.
fn anchors(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| l.starts_with('#'))
        .map(|l| {
            l.trim_start_matches('#')
                .trim()
                .to_lowercase()
                .chars()
                .filter_map(|c| match c {
                    ' ' => Some('-'),
                    c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
                    _ => None,
                })
                .collect()
        })
        .collect()
}
