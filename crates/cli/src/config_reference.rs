//! The configuration reference, `docs/CONFIGURATION.md`, read as data.
//!
//! Owns: reading the page's tables (every key, its default as TOML, its
//! meaning) and rendering the commented file `datafactory config init`
//! writes. The page is embedded at build time, so the file's comments and the
//! page are one text; the tests below check the page against the code
//! (`Config::default()`), so neither can drift from the other.
//!
//! Must not: hold defaults of its own (they are the code's, and only checked
//! here) or decide anything about loading or validating a configuration
//! (`datafactory_core::config` does).

/// `docs/CONFIGURATION.md`.
pub const REFERENCE: &str = include_str!("../../../docs/CONFIGURATION.md");

/// One `## ` part of the page that has a table of keys.
#[derive(Debug, Clone, PartialEq)]
pub struct Section {
    /// The heading, backticks removed: `Top level`, `[ingest]`, `[[enrichment.endpoints]]`.
    pub heading: String,
    /// The paragraph between the heading and its table.
    pub about: String,
    pub keys: Vec<Key>,
}

/// One row of a table.
#[derive(Debug, Clone, PartialEq)]
pub struct Key {
    /// The dotted key: `data_dir`, `ingest.workers`, `enrichment.endpoints[].url`.
    pub key: String,
    /// The default as a TOML value: `512`, `"auto"`, `[]`.
    pub default: String,
    pub meaning: String,
}

impl Key {
    /// The key's name inside its table: `workers` for `ingest.workers`.
    pub fn name(&self) -> &str {
        self.key.rsplit('.').next().unwrap_or(&self.key)
    }

    /// The TOML table the key lives in: `""` (top level), `ingest`,
    /// `enrichment.endpoints[]` (one table of an array of tables).
    pub fn table(&self) -> &str {
        self.key.rsplit_once('.').map_or("", |(t, _)| t)
    }
}

/// The sections of a reference page with their keys. Sections without a
/// table (prose) are left out. Errors name the line that is not a key row.
pub fn parse(text: &str) -> Result<Vec<Section>, String> {
    let mut sections: Vec<Section> = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if let Some(heading) = line.strip_prefix("## ") {
            sections.push(Section {
                heading: heading.replace('`', ""),
                about: String::new(),
                keys: Vec::new(),
            });
        } else if line.starts_with("| `") {
            let section = sections
                .last_mut()
                .ok_or_else(|| format!("line {}: a key row before any `## ` heading", n + 1))?;
            section.keys.push(parse_row(line).map_err(|e| format!("line {}: {e}: {line}", n + 1))?);
        } else if line.starts_with('|') || line.is_empty() {
            // A table's header or separator, or a paragraph break.
        } else if let Some(section) = sections.last_mut().filter(|s| s.keys.is_empty()) {
            if !section.about.is_empty() {
                section.about.push(' ');
            }
            section.about.push_str(line);
        }
    }
    sections.retain(|s| !s.keys.is_empty());
    Ok(sections)
}

/// `| `key` | `default` | meaning |`.
fn parse_row(line: &str) -> Result<Key, String> {
    let inner =
        line.strip_prefix('|').and_then(|l| l.strip_suffix('|')).ok_or("a row must start and end with |")?;
    let cells: Vec<&str> = inner.split('|').map(str::trim).collect();
    let [key, default, meaning] = cells[..] else {
        return Err(format!("expected 3 cells (key, default, meaning), found {}", cells.len()));
    };
    let code = |cell: &str, what: &str| {
        cell.strip_prefix('`')
            .and_then(|c| c.strip_suffix('`'))
            .filter(|c| !c.is_empty() && !c.contains('`'))
            .map(str::to_string)
            .ok_or_else(|| format!("the {what} must be one `code` span, is {cell:?}"))
    };
    if meaning.is_empty() {
        return Err("the meaning is empty".to_string());
    }
    Ok(Key { key: code(key, "key")?, default: code(default, "default")?, meaning: meaning.to_string() })
}

/// The embedded reference's sections (the page is part of the program, so a
/// malformed page is a bug the tests catch).
pub fn sections() -> Vec<Section> {
    parse(REFERENCE).expect("docs/CONFIGURATION.md is malformed (the tests say where)")
}

/// Comment lines of at most `width` characters (unless a word is longer):
/// `prefix`, a space, then words.
fn comment(out: &mut String, prefix: &str, text: &str, width: usize) {
    let mut line = String::from(prefix);
    for word in text.split_whitespace() {
        if line.len() > prefix.len() && line.len() + 1 + word.len() > width {
            out.push_str(&line);
            out.push('\n');
            line = String::from(prefix);
        }
        line.push(' ');
        line.push_str(word);
    }
    if line.len() > prefix.len() {
        out.push_str(&line);
        out.push('\n');
    }
}

const WIDTH: usize = 79;

/// The file `datafactory config init` writes: every key set to its default,
/// each under its meaning; an array of tables (`[[enrichment.endpoints]]`),
/// empty by default, as a commented example to copy.
pub fn render_init(sections: &[Section]) -> String {
    let mut out = String::new();
    comment(
        &mut out,
        "#",
        &format!(
            "DataFactory configuration, written by `datafactory config init` (DataFactory {}): every \
             key at its default, each under its meaning. The reference is docs/CONFIGURATION.md.",
            env!("CARGO_PKG_VERSION")
        ),
        WIDTH,
    );
    comment(
        &mut out,
        "#",
        "Change what you need; a key you delete takes its default. Later sources win: this file, then \
         DATAFACTORY_* variables (DATAFACTORY_CHUNKING__MAX_TOKENS=256), then flags. \
         `datafactory config show` prints the result.",
        WIDTH,
    );
    // Arrays of tables: written as examples, so their key in the parent table
    // (`endpoints = []`) is left to its default rather than set.
    let arrays: Vec<&str> =
        sections.iter().flat_map(|s| &s.keys).filter_map(|k| k.table().strip_suffix("[]")).collect();
    // Top-level keys first: TOML puts them before any table.
    let (top, tables): (Vec<&Section>, Vec<&Section>) =
        sections.iter().partition(|s| s.keys.iter().all(|k| k.table().is_empty()));
    for section in top.iter().chain(&tables) {
        let table = section.keys.first().map_or("", |k| k.table());
        out.push('\n');
        if let Some(array) = table.strip_suffix("[]") {
            comment(&mut out, "#", &section.about, WIDTH);
            out.push_str(
                "# None by default. To add one, copy these lines without their leading \"# \":\n#\n",
            );
            out.push_str(&format!("# [[{array}]]\n"));
            for key in &section.keys {
                comment(&mut out, "# ##", &key.meaning, WIDTH);
                out.push_str(&format!("# {} = {}\n", key.name(), key.default));
            }
            continue;
        }
        if !table.is_empty() {
            comment(&mut out, "#", &section.about, WIDTH);
            out.push_str(&format!("[{table}]\n"));
        }
        for (i, key) in section.keys.iter().enumerate() {
            if i > 0 {
                out.push('\n');
            }
            comment(&mut out, "#", &key.meaning, WIDTH);
            if arrays.contains(&key.key.as_str()) {
                out.push_str(&format!("# {} = {}  (see [[{}]] below)\n", key.name(), key.default, key.key));
            } else {
                out.push_str(&format!("{} = {}\n", key.name(), key.default));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafactory_core::config::EndpointConfig;
    use datafactory_core::Config;
    use std::collections::BTreeMap;

    /// `value`'s leaves under dotted keys; arrays and empty tables are leaves.
    fn flatten(prefix: &str, value: &toml::Value, out: &mut BTreeMap<String, toml::Value>) {
        match value {
            toml::Value::Table(t) if !t.is_empty() => {
                for (k, v) in t {
                    let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                    flatten(&key, v, out);
                }
            }
            _ => {
                out.insert(prefix.to_string(), value.clone());
            }
        }
    }

    /// Every key of the code with its default: `Config::default()`, and one
    /// enrichment endpoint's defaults as `enrichment.endpoints[].KEY`.
    fn code_keys() -> BTreeMap<String, toml::Value> {
        let mut out = BTreeMap::new();
        flatten("", &toml::Value::try_from(Config::default()).unwrap(), &mut out);
        flatten(
            "enrichment.endpoints[]",
            &toml::Value::try_from(EndpointConfig::default()).unwrap(),
            &mut out,
        );
        out
    }

    fn toml_value(text: &str) -> Result<toml::Value, String> {
        let table: toml::Table = toml::from_str(&format!("v = {text}")).map_err(|e| e.to_string())?;
        Ok(table["v"].clone())
    }

    /// Equal as TOML values; floats as the f32 most of them are in the code.
    fn same(a: &toml::Value, b: &toml::Value) -> bool {
        match (a, b) {
            (toml::Value::Float(x), toml::Value::Float(y)) => *x as f32 == *y as f32,
            _ => a == b,
        }
    }

    fn doc_keys() -> Vec<Key> {
        parse(REFERENCE).unwrap().into_iter().flat_map(|s| s.keys).collect()
    }

    #[test]
    fn every_key_of_the_code_is_in_the_reference_with_its_default() {
        let documented: BTreeMap<String, Key> = doc_keys().into_iter().map(|k| (k.key.clone(), k)).collect();
        let mut problems = Vec::new();
        for (key, value) in code_keys() {
            match documented.get(&key) {
                None => problems.push(format!("{key} (default {value}) is not in docs/CONFIGURATION.md")),
                Some(doc) => match toml_value(&doc.default) {
                    Err(e) => problems
                        .push(format!("{key}: the default `{}` is not a TOML value: {e}", doc.default)),
                    Ok(d) if !same(&d, &value) => {
                        problems.push(format!("{key}: the reference says {d}, the code {value}"))
                    }
                    Ok(_) => {}
                },
            }
        }
        assert!(problems.is_empty(), "docs/CONFIGURATION.md has drifted:\n{}", problems.join("\n"));
    }

    #[test]
    fn every_key_of_the_reference_is_in_the_code_once() {
        let code = code_keys();
        let mut seen = std::collections::BTreeSet::new();
        for k in doc_keys() {
            assert!(
                code.contains_key(&k.key),
                "docs/CONFIGURATION.md lists {}, which the code does not have",
                k.key
            );
            assert!(seen.insert(k.key.clone()), "docs/CONFIGURATION.md lists {} twice", k.key);
        }
    }

    #[test]
    fn each_section_lists_only_its_own_keys() {
        for s in parse(REFERENCE).unwrap() {
            let tables: std::collections::BTreeSet<&str> = s.keys.iter().map(|k| k.table()).collect();
            assert_eq!(tables.len(), 1, "section {} mixes tables: {tables:?}", s.heading);
            let table = *tables.iter().next().unwrap();
            let expected = match table {
                "" => "Top level".to_string(),
                t => match t.strip_suffix("[]") {
                    Some(array) => format!("[[{array}]]"),
                    None => format!("[{t}]"),
                },
            };
            assert_eq!(s.heading, expected);
            assert!(!s.about.is_empty(), "section {} has no description", s.heading);
        }
    }

    #[test]
    fn the_init_file_loads_as_the_defaults_and_explains_every_key() {
        let text = render_init(&sections());
        let loaded: Config = toml::from_str(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(loaded, Config::default());
        let lines: Vec<&str> = text.lines().collect();
        for k in doc_keys() {
            // The key's line after its table's header, and its meaning's
            // first words in the comment above it.
            let table = k.table();
            let header = match table.strip_suffix("[]") {
                _ if table.is_empty() => None,
                Some(array) => Some(format!("# [[{array}]]")),
                None => Some(format!("[{table}]")),
            };
            let start = header.map_or(0, |h| {
                lines.iter().position(|l| *l == h).unwrap_or_else(|| panic!("no {h} in the file:\n{text}"))
            });
            let example = table.ends_with("[]");
            let at = (start..lines.len())
                .find(|&i| {
                    let l = if example { lines[i].strip_prefix("# ").unwrap_or("") } else { lines[i] };
                    l.trim_start_matches("# ").starts_with(&format!("{} = {}", k.name(), k.default))
                })
                .unwrap_or_else(|| panic!("{} is not in the file:\n{text}", k.key));
            let above: Vec<&str> = lines[..at]
                .iter()
                .rev()
                .take_while(|l| if example { l.starts_with("# ##") } else { l.starts_with('#') })
                .copied()
                .collect();
            let comment: String = above.into_iter().rev().collect::<Vec<_>>().join(" ");
            let first_words: String = k.meaning.split_whitespace().take(3).collect::<Vec<_>>().join(" ");
            assert!(comment.contains(&first_words), "{}: {first_words:?} not in {comment:?}", k.key);
        }
    }

    #[test]
    fn the_endpoint_example_uncommented_is_one_default_endpoint() {
        let text = render_init(&sections());
        let mut uncommented = String::new();
        let mut in_example = false;
        for line in text.lines() {
            if line == "# [[enrichment.endpoints]]" {
                in_example = true;
            } else if in_example && !line.starts_with('#') {
                in_example = false;
            }
            match line.strip_prefix("# ") {
                Some(l) if in_example && !l.starts_with('#') => uncommented.push_str(l),
                _ => uncommented.push_str(line),
            }
            uncommented.push('\n');
        }
        let loaded: Config = toml::from_str(&uncommented).unwrap_or_else(|e| panic!("{e}\n{uncommented}"));
        assert_eq!(loaded.enrichment.endpoints, vec![EndpointConfig::default()]);
    }

    #[test]
    fn malformed_rows_are_named() {
        let e = parse("## [x]\n\nAbout.\n\n| `x.a` | 1 | A. |\n").unwrap_err();
        assert!(e.contains("line 5") && e.contains("default"), "{e}");
        let e = parse("## [x]\n\n| `x.a` | `1` |\n").unwrap_err();
        assert!(e.contains("3 cells"), "{e}");
        let e = parse("| `x.a` | `1` | A. |\n").unwrap_err();
        assert!(e.contains("before any"), "{e}");
        let s = parse("# T\n\nProse.\n\n## [x]\n\nAbout x.\n\n| Key | Default | Meaning |\n|---|---|---|\n| `x.a` | `1` | A. |\n")
            .unwrap();
        assert_eq!(
            s,
            vec![Section {
                heading: "[x]".into(),
                about: "About x.".into(),
                keys: vec![Key { key: "x.a".into(), default: "1".into(), meaning: "A.".into() }],
            }]
        );
    }
}
