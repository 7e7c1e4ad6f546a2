//! The documentation's links work: every relative link in the repository's
//! Markdown (the `*.md` files at its root, such as README.md and
//! ARCHITECTURE.md, and every `docs/*.md`) names a file or folder that exists
//! inside the repository, and every `#anchor` names a heading of the page it
//! points at, by GitHub's rules for heading ids. Links with a scheme
//! (`https:`, `mailto:`) are not followed: the tests reach no network.
//!
//! Run alone: `cargo test -p datafactory --test docs_links`.

use pulldown_cmark::{BrokenLink, CowStr, Event, LinkType, Options, Parser, Tag, TagEnd};
use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};

/// The id GitHub gives a heading with this text (the `github-slugger`
/// rules): lower-cased; every character but letters, digits, marks, `-`, `_`
/// and the space dropped; each space made a `-`. Repeats are counted by
/// [`Anchors`].
fn slug(heading: &str) -> String {
    heading
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, '-' | '_' | ' ') || is_mark(*c))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// Combining marks in the blocks Markdown headings use (accents written as
/// separate code points); GitHub keeps them in an id.
fn is_mark(c: char) -> bool {
    matches!(c, '\u{0300}'..='\u{036F}' | '\u{1AB0}'..='\u{1AFF}' | '\u{1DC0}'..='\u{1DFF}' | '\u{20D0}'..='\u{20FF}' | '\u{FE20}'..='\u{FE2F}')
}

/// A page's heading ids in order, numbered as GitHub numbers repeats: the
/// second "Cranfield" is `cranfield-1`.
#[derive(Default)]
struct Anchors {
    seen: HashMap<String, usize>,
    ids: Vec<String>,
}

impl Anchors {
    fn add(&mut self, heading: &str) {
        let base = slug(heading);
        let mut id = base.clone();
        while self.seen.contains_key(&id) {
            let n = self.seen.get_mut(&base).map(|n| {
                *n += 1;
                *n
            });
            id = format!("{base}-{}", n.unwrap_or(1));
        }
        self.seen.insert(id.clone(), 0);
        self.ids.push(id);
    }
}

/// What one Markdown page holds: its heading ids, and its links with the
/// line each is on.
struct Page {
    anchors: Vec<String>,
    links: Vec<(usize, String)>,
    /// `[text][ref]` whose `ref` is defined nowhere: GitHub shows it as text.
    undefined_references: Vec<(usize, String)>,
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

fn read_page<'a>(text: &'a str) -> Page {
    let mut undefined = Vec::new();
    let mut callback = |b: BrokenLink<'a>| -> Option<(CowStr<'a>, CowStr<'a>)> {
        if matches!(b.link_type, LinkType::Reference | LinkType::Collapsed) {
            undefined.push((line_of(text, b.span.start), b.reference.to_string()));
        }
        None
    };
    let options = Options::ENABLE_TABLES | Options::ENABLE_FOOTNOTES | Options::ENABLE_STRIKETHROUGH;
    let parser = Parser::new_with_broken_link_callback(text, options, Some(&mut callback));
    let mut anchors = Anchors::default();
    let mut links = Vec::new();
    let mut heading: Option<String> = None;
    for (event, range) in parser.into_offset_iter() {
        match event {
            Event::Start(Tag::Heading { .. }) => heading = Some(String::new()),
            Event::End(TagEnd::Heading(_)) => {
                if let Some(h) = heading.take() {
                    anchors.add(&h);
                }
            }
            Event::Text(t) | Event::Code(t) => {
                if let Some(h) = heading.as_mut() {
                    h.push_str(&t);
                }
            }
            Event::Start(Tag::Link { dest_url, .. }) | Event::Start(Tag::Image { dest_url, .. }) => {
                links.push((line_of(text, range.start), dest_url.to_string()));
            }
            _ => {}
        }
    }
    Page { anchors: anchors.ids, links, undefined_references: undefined }
}

/// `path` with `.` and `..` resolved without touching the file system; None
/// if it climbs above where it started.
fn normalize(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    return None;
                }
            }
            Component::Normal(p) => out.push(p),
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

/// Every broken link of the Markdown files `pages` (paths relative to
/// `root`), one line each: `file:line: link: why`.
fn broken_links(root: &Path, pages: &[PathBuf]) -> Vec<String> {
    let mut cache: HashMap<PathBuf, Page> = HashMap::new();
    let mut page = |rel: &Path| -> Option<Vec<String>> {
        if !cache.contains_key(rel) {
            let text = std::fs::read_to_string(root.join(rel)).ok()?;
            cache.insert(rel.to_path_buf(), read_page(&text));
        }
        cache.get(rel).map(|p| p.anchors.clone())
    };
    let mut problems = Vec::new();
    for rel in pages {
        let text = match std::fs::read_to_string(root.join(rel)) {
            Ok(t) => t,
            Err(e) => {
                problems.push(format!("{}: cannot be read: {e}", rel.display()));
                continue;
            }
        };
        let here = read_page(&text);
        for (line, reference) in &here.undefined_references {
            problems
                .push(format!("{}:{line}: [{reference}]: the reference is defined nowhere", rel.display()));
        }
        for (line, link) in &here.links {
            let at = format!("{}:{line}: {link}", rel.display());
            if link.contains("://") || link.starts_with("mailto:") {
                continue; // external: not followed
            }
            if link.is_empty() {
                problems.push(format!("{at}: empty link"));
                continue;
            }
            let (path, anchor) = match link.split_once('#') {
                Some((p, a)) => (p, Some(a)),
                None => (link.as_str(), None),
            };
            let target = if path.is_empty() {
                Some(rel.clone())
            } else if let Some(from_root) = path.strip_prefix('/') {
                normalize(Path::new(from_root))
            } else {
                normalize(&rel.parent().unwrap_or(Path::new("")).join(path))
            };
            let Some(target) = target else {
                problems.push(format!("{at}: leads outside the repository"));
                continue;
            };
            if !root.join(&target).exists() {
                problems.push(format!("{at}: {} does not exist", target.display()));
                continue;
            }
            let Some(anchor) = anchor else { continue };
            if target.extension().and_then(|e| e.to_str()) != Some("md") {
                problems
                    .push(format!("{at}: an anchor into {}, which is not a Markdown page", target.display()));
                continue;
            }
            match page(&target) {
                Some(anchors) if anchors.iter().any(|a| a == anchor) => {}
                Some(anchors) => problems.push(format!(
                    "{at}: {} has no heading with the id {anchor:?} (its ids: {})",
                    target.display(),
                    anchors.join(", ")
                )),
                None => problems.push(format!("{at}: {} cannot be read", target.display())),
            }
        }
    }
    problems
}

/// The Markdown pages of the repository that the links must hold in: every
/// `*.md` at its root and in `docs/`.
fn repository_pages(root: &Path) -> Vec<PathBuf> {
    let mut pages = Vec::new();
    for dir in ["", "docs"] {
        let entries = std::fs::read_dir(root.join(dir)).unwrap_or_else(|e| panic!("{dir:?}: {e}"));
        for entry in entries {
            let path = PathBuf::from(dir).join(entry.unwrap().file_name());
            if path.extension().and_then(|e| e.to_str()) == Some("md") {
                pages.push(path);
            }
        }
    }
    pages.sort();
    pages
}

#[test]
fn every_link_of_the_documentation_works() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let pages = repository_pages(&root);
    for expected in ["README.md", "ARCHITECTURE.md", "docs/GUIDE.md"] {
        assert!(pages.contains(&PathBuf::from(expected)), "{expected} not found among {pages:?}");
    }
    let problems = broken_links(&root, &pages);
    assert!(problems.is_empty(), "broken links:\n{}", problems.join("\n"));
}

#[test]
fn slugs_follow_github() {
    assert_eq!(slug("JSON output (stable)"), "json-output-stable");
    assert_eq!(
        slug("Enrichment: prefix-affine schedule vs the seed's round robin"),
        "enrichment-prefix-affine-schedule-vs-the-seeds-round-robin"
    );
    // An em dash between spaces leaves two hyphens; `_` stays; backticks go.
    assert_eq!(
        slug("Fusion weights, candidates, headings — docs set, MiniLM, given chunks"),
        "fusion-weights-candidates-headings--docs-set-minilm-given-chunks"
    );
    assert_eq!(
        slug("Cookbook docs set (`anthropic_docs_rag`: 232 sections)"),
        "cookbook-docs-set-anthropic_docs_rag-232-sections"
    );
    assert_eq!(slug("Café 1.0 / Über"), "café-10--über");
    let mut a = Anchors::default();
    for h in ["Cranfield", "Cranfield", "Cranfield-1", "Cranfield"] {
        a.add(h);
    }
    assert_eq!(a.ids, ["cranfield", "cranfield-1", "cranfield-1-1", "cranfield-2"]);
}

#[test]
fn headings_are_read_as_github_renders_them() {
    let page = read_page(
        "# The `serve` command\n\n```toml\n# not a heading\n```\n\n## **Bold** and [a link](x.md)\n\nSetext\n------\n",
    );
    assert_eq!(page.anchors, ["the-serve-command", "bold-and-a-link", "setext"]);
}

/// Writes `files` (path, text) into a fresh folder and checks its pages.
fn check(files: &[(&str, &str)]) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let mut pages = Vec::new();
    for (path, text) in files {
        let full = dir.path().join(path);
        std::fs::create_dir_all(full.parent().unwrap()).unwrap();
        std::fs::write(&full, text).unwrap();
        if path.ends_with(".md") {
            pages.push(PathBuf::from(path));
        }
    }
    broken_links(dir.path(), &pages)
}

#[test]
fn good_links_pass() {
    let problems = check(&[
        (
            "README.md",
            "# Top\n\nSee [the guide](docs/GUIDE.md), [its search](docs/GUIDE.md#search-and-rerank), \
             [below](#top), [a folder](docs/), [a file](src/main.rs), [root-relative](/docs/GUIDE.md#the-guide) \
             and [the web](https://example.com/x#y).\n\n[ref link][r]\n\n[r]: docs/GUIDE.md\n",
        ),
        ("docs/GUIDE.md", "# The guide\n\n## Search and rerank\n\nBack [home](../README.md#top).\n"),
        ("src/main.rs", "fn main() {}\n"),
    ]);
    assert!(problems.is_empty(), "{problems:?}");
}

#[test]
fn a_missing_file_fails() {
    let problems = check(&[("README.md", "# Top\n\nSee [config](docs/CONFIGURATION.md).\n")]);
    assert_eq!(problems, ["README.md:3: docs/CONFIGURATION.md: docs/CONFIGURATION.md does not exist"]);
}

#[test]
fn a_missing_anchor_fails() {
    let problems = check(&[
        ("README.md", "# Top\n\nSee [search](docs/GUIDE.md#serch) and [here](#tpo).\n"),
        ("docs/GUIDE.md", "# Guide\n\n## Search\n"),
    ]);
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert!(
        problems[0].contains("docs/GUIDE.md has no heading with the id \"serch\" (its ids: guide, search)"),
        "{problems:?}"
    );
    assert!(problems[1].contains("README.md has no heading with the id \"tpo\""), "{problems:?}");
}

#[test]
fn links_in_tables_and_lists_are_checked_too() {
    let problems = check(&[(
        "README.md",
        "# Top\n\n| a | b |\n|---|---|\n| [x](gone.md) | y |\n\n- [z](also-gone.md)\n",
    )]);
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert!(problems[0].starts_with("README.md:5: gone.md"), "{problems:?}");
    assert!(problems[1].starts_with("README.md:7: also-gone.md"), "{problems:?}");
}

#[test]
fn links_out_of_the_repository_and_undefined_references_fail() {
    let problems = check(&[("docs/A.md", "# A\n\n[data](../../shared/data) and [text][nowhere].\n")]);
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert!(
        problems.iter().any(|p| p.contains("[nowhere]: the reference is defined nowhere")),
        "{problems:?}"
    );
    assert!(
        problems.iter().any(|p| p.contains("../../shared/data: leads outside the repository")),
        "{problems:?}"
    );
}

#[test]
fn an_anchor_into_a_file_that_is_not_markdown_fails() {
    let problems = check(&[("README.md", "# Top\n\n[line](main.rs#L3)\n"), ("main.rs", "fn main() {}\n")]);
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0].contains("not a Markdown page"), "{problems:?}");
}
