//! The layering rule of the crate doc (`src/lib.rs`, "Layers"), checked against the code:
//! every module on the floor the table gives it, each importing only from floors below, and
//! the two rules that ride on the floors. Reads the sources as text; needs no broker.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

const LIB: &str = "src/lib.rs";

/// The floors of the crate doc's table: module name -> floor (`lib` for `lib.rs`).
fn floors() -> BTreeMap<String, u32> {
    let lib = std::fs::read_to_string(root().join(LIB)).expect("src/lib.rs");
    let mut floors = BTreeMap::new();
    for line in lib.lines() {
        let Some(row) = line.strip_prefix("//! | ") else {
            continue;
        };
        let cells: Vec<&str> = row.split(" | ").collect();
        let Ok(floor) = cells[0].trim().parse::<u32>() else {
            continue;
        };
        for module in cells[1].split(',') {
            let name = module.trim().trim_matches(|c| "[]`".contains(c));
            let name = name.strip_suffix(".rs").unwrap_or(name);
            floors.insert(name.to_string(), floor);
        }
    }
    floors
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every library source file (not the binary), with its top-level module.
fn sources() -> Vec<(String, String)> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("a source folder") {
            let path = entry.expect("an entry").path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    let src = root().join("src");
    let mut files = Vec::new();
    walk(&src, &mut files);
    files
        .into_iter()
        .filter(|f| !f.starts_with(src.join("bin")))
        .map(|f| {
            let rel = f.strip_prefix(root()).unwrap().display().to_string();
            let first = f.strip_prefix(&src).unwrap().components().next().unwrap();
            let first = first.as_os_str().to_string_lossy();
            let module = first.strip_suffix(".rs").unwrap_or(&first).to_string();
            (rel, module)
        })
        .collect()
}

/// The code of `text` without comments (line comments, doc comments included) and string
/// literals, so that a module named in prose or in a message is no import.
fn code(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        let mut in_str = false;
        let mut prev = ' ';
        let mut kept = String::new();
        let chars: Vec<char> = line.chars().collect();
        let mut i = 0;
        while i < chars.len() {
            let c = chars[i];
            if !in_str && c == '/' && chars.get(i + 1) == Some(&'/') {
                break;
            }
            if c == '"' && prev != '\\' && prev != '\'' {
                in_str = !in_str;
            } else if !in_str {
                kept.push(c);
            }
            prev = c;
            i += 1;
        }
        out.push_str(&kept);
        out.push('\n');
    }
    out
}

/// The top-level modules `code` reaches through `crate::…`, `use crate::{a, b}` included;
/// `lib` for a name that only the crate root re-exports (`crate::Result`).
fn imports(code: &str) -> Vec<String> {
    let mut found = Vec::new();
    let bytes = code.as_bytes();
    let mut at = 0;
    while let Some(pos) = code[at..].find("crate::") {
        let start = at + pos + "crate::".len();
        at = start;
        let before = code[..at - "crate::".len()].chars().last();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue; // `$crate::`, `my_crate::`
        }
        let names: Vec<String> = if bytes.get(start) == Some(&b'{') {
            let end = code[start..].find('}').map_or(code.len(), |e| start + e);
            code[start + 1..end]
                .split(',')
                .map(|p| p.trim().split("::").next().unwrap_or("").to_string())
                .collect()
        } else {
            let name: String = code[start..]
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            vec![name]
        };
        for name in names.into_iter().filter(|n| !n.is_empty()) {
            let is_module = name.chars().next().is_some_and(|c| c.is_lowercase());
            found.push(if is_module { name } else { "lib".to_string() });
        }
    }
    found
}

#[test]
fn the_crate_doc_gives_every_module_a_floor() {
    let floors = floors();
    assert!(
        floors.len() > 10,
        "no layer table read from src/lib.rs: {floors:?}"
    );
    for (file, module) in sources() {
        assert!(
            floors.contains_key(&module),
            "{file}: module `{module}` has no floor in the crate doc's layer table (src/lib.rs)"
        );
    }
}

#[test]
fn every_module_imports_only_from_the_floors_below_it() {
    let floors = floors();
    let mut upward = Vec::new();
    for (file, module) in sources() {
        let Some(&own) = floors.get(&module) else {
            continue; // reported by the test above
        };
        let text = std::fs::read_to_string(root().join(&file)).unwrap();
        for target in imports(&code(&text)) {
            if target == module {
                continue;
            }
            let Some(&theirs) = floors.get(&target) else {
                upward.push(format!("{file} -> `{target}` (not in the table)"));
                continue;
            };
            if theirs >= own {
                upward.push(format!(
                    "{file} (floor {own}) -> `{target}` (floor {theirs})"
                ));
            }
        }
    }
    assert!(
        upward.is_empty(),
        "imports that do not run downward:\n  {}",
        upward.join("\n  ")
    );
}

#[test]
fn nothing_below_floor_four_names_settings_or_talks_to_the_broker() {
    let floors = floors();
    let talks = [
        "create_channel",
        "basic_publish",
        "basic_consume",
        "basic_get",
        "queue_declare",
        "queue_bind",
        "exchange_declare",
    ];
    let mut found = Vec::new();
    for (file, module) in sources() {
        let floor = floors.get(&module).copied().unwrap_or(0);
        let text = code(&std::fs::read_to_string(root().join(&file)).unwrap());
        if floor < 4 && text.contains("Settings") {
            found.push(format!("{file} (floor {floor}) names Settings"));
        }
        let may_talk = module == "broker"
            || file.ends_with("topology/declare.rs")
            || file.ends_with("topology/teardown.rs")
            || floor >= 5;
        for call in talks {
            if !may_talk && text.contains(call) {
                found.push(format!("{file} (floor {floor}) calls lapin's `{call}`"));
            }
        }
    }
    assert!(found.is_empty(), "{}", found.join("\n"));
}

#[test]
fn the_import_reader_sees_what_it_must() {
    let text = code(
        "use crate::error::{Error, Result};\nuse crate::{config::Settings, wire};\n\
         // use crate::ops;\nlet s = \"crate::worker\";\nfn f() -> crate::Result<()> {}\n",
    );
    assert_eq!(imports(&text), ["error", "config", "wire", "lib"]);
}
