//! HTML: the visible text of the page's main content, with headings as
//! section boundaries.
//!
//! Bounded: html5ever's tree builder walks its stack of open elements for
//! each tag (scope checks), which is quadratic in the nesting depth (100 000
//! nested `<div>`s took 13 s). The parse is fed in slices to a sink that
//! records each node's depth and stops at the first node deeper than
//! `ingest.max_nesting` ([`ParseError::TooDeep`]); every walk over the tree
//! below is one pass.

use std::borrow::Cow;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::path::Path;

use datafactory_core::document::{Document, Format};
use ego_tree::{NodeId, NodeRef};
use html5ever::tendril::{StrTendril, TendrilSink};
use html5ever::tree_builder::{ElementFlags, NodeOrText, QuirksMode, TreeSink};
use html5ever::{Attribute, QualName};
use scraper::{Html, HtmlTreeSink, Node};

use crate::{
    clip_title, collapse_whitespace, fallback_title, finish, sections_from_headings, HeadingMark, ParseError,
};

/// Elements whose content is never text of the document.
fn is_dropped_name(name: &str) -> bool {
    matches!(
        name,
        "head"
            | "script"
            | "style"
            | "noscript"
            | "template"
            | "svg"
            | "math"
            | "nav"
            | "iframe"
            | "object"
            | "embed"
            | "canvas"
            | "audio"
            | "video"
            | "button"
            | "select"
            | "textarea"
            | "input"
            | "dialog"
    )
}

fn is_dropped(el: &scraper::node::Element) -> bool {
    is_dropped_name(el.name())
        || el.attr("hidden").is_some()
        || el
            .attr("aria-hidden")
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
        || el
            .attr("role")
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("navigation"))
        // mdBook hides boilerplate lines of code examples ("boring" lines).
        || (el.name() == "span" && el.has_class("boring", scraper::CaseSensitivity::CaseSensitive))
}

fn is_block(name: &str) -> bool {
    matches!(
        name,
        "address"
            | "article"
            | "aside"
            | "blockquote"
            | "body"
            | "caption"
            | "center"
            | "dd"
            | "details"
            | "div"
            | "dl"
            | "dt"
            | "fieldset"
            | "figcaption"
            | "figure"
            | "footer"
            | "form"
            | "h1"
            | "h2"
            | "h3"
            | "h4"
            | "h5"
            | "h6"
            | "header"
            | "hgroup"
            | "hr"
            | "html"
            | "legend"
            | "li"
            | "main"
            | "menu"
            | "ol"
            | "p"
            | "pre"
            | "section"
            | "summary"
            | "table"
            | "ul"
    )
}

fn heading_level(name: &str) -> Option<u32> {
    match name {
        "h1" => Some(1),
        "h2" => Some(2),
        "h3" => Some(3),
        "h4" => Some(4),
        "h5" => Some(5),
        "h6" => Some(6),
        _ => None,
    }
}

/// Pending whitespace between what was written and what comes next.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Gap {
    None,
    Space,
    Line,
    Paragraph,
}

/// Writes text, collapsing whitespace and turning blocks into paragraphs.
struct Writer {
    out: String,
    chars: usize,
    gap: Gap,
    /// Inside `<pre>`: text is written verbatim.
    pre: usize,
    /// Inside a table cell: breaks become spaces.
    cell: usize,
}

impl Writer {
    fn push_raw(&mut self, s: &str) {
        self.chars += s.chars().count();
        self.out.push_str(s);
    }

    fn gap(&mut self, gap: Gap) {
        let gap = if self.cell > 0 && gap > Gap::Space { Gap::Space } else { gap };
        self.gap = self.gap.max(gap);
    }

    /// Writes the pending gap now (nothing at the start of the text).
    fn flush_gap(&mut self) {
        let gap = std::mem::replace(&mut self.gap, Gap::None);
        if self.out.is_empty() {
            return;
        }
        match gap {
            Gap::None => {}
            Gap::Space => {
                if !self.out.ends_with(char::is_whitespace) {
                    self.push_raw(" ");
                }
            }
            Gap::Line => {
                if !self.out.ends_with('\n') {
                    self.trim_trailing_spaces();
                    self.push_raw("\n");
                }
            }
            Gap::Paragraph => {
                self.trim_trailing_spaces();
                if self.out.ends_with("\n\n") {
                } else if self.out.ends_with('\n') {
                    self.push_raw("\n");
                } else {
                    self.push_raw("\n\n");
                }
            }
        }
    }

    fn trim_trailing_spaces(&mut self) {
        while self.out.ends_with([' ', '\t']) {
            self.out.pop();
            self.chars -= 1;
        }
    }

    fn text(&mut self, s: &str) {
        if self.pre > 0 {
            if !s.is_empty() {
                self.flush_gap();
                self.push_raw(s);
            }
            return;
        }
        for ch in s.chars() {
            if ch.is_whitespace() {
                self.gap(Gap::Space);
            } else {
                self.flush_gap();
                self.out.push(ch);
                self.chars += 1;
            }
        }
    }
}

enum Step<'a> {
    Enter(NodeRef<'a, Node>),
    Exit(Exit),
}

enum Exit {
    Block,
    Pre,
    Cell,
    Row,
    Heading { level: u32, start: usize },
}

/// The roots whose text is the document: the first visible `<main>`, else
/// the outermost visible `<article>`s, else the whole page. One pass.
fn content_roots(html: &Html) -> Vec<NodeRef<'_, Node>> {
    let mut articles = Vec::new();
    // (node, inside a dropped element, inside an article)
    let mut stack = vec![(html.tree.root(), false, false)];
    while let Some((node, mut hidden, mut in_article)) = stack.pop() {
        if let Some(e) = node.value().as_element() {
            hidden |= is_dropped(e);
            if e.name() == "main" && !hidden {
                return vec![node];
            }
            if e.name() == "article" {
                if !hidden && !in_article {
                    articles.push(node);
                }
                in_article = true;
            }
        }
        stack.extend(node.children().rev().map(|c| (c, hidden, in_article)));
    }
    if !articles.is_empty() {
        return articles;
    }
    vec![html.tree.root()]
}

/// Input fed to html5ever at a time; the depth is checked between slices.
const FEED_BYTES: usize = 16 * 1024;

/// Parses `source` with html5ever, refusing it once a node lies deeper than
/// `max_nesting`.
fn parse_bounded(source: &str, max_nesting: usize) -> Result<Html, ParseError> {
    let sink = DepthSink {
        inner: HtmlTreeSink::new(Html::new_document()),
        depths: RefCell::new(HashMap::new()),
        limit: max_nesting,
        exceeded: Cell::new(false),
    };
    let mut parser = html5ever::driver::parse_document(sink, Default::default());
    let mut rest = source;
    while !rest.is_empty() {
        let mut cut = rest.len().min(FEED_BYTES);
        while !rest.is_char_boundary(cut) {
            cut += 1;
        }
        parser.process(StrTendril::from_slice(&rest[..cut]));
        rest = &rest[cut..];
        if parser.tokenizer.sink.sink.exceeded.get() {
            return Err(ParseError::TooDeep { format: Format::Html, limit: max_nesting });
        }
    }
    let sink_exceeded = parser.tokenizer.sink.sink.exceeded.get();
    let html = parser.finish();
    if sink_exceeded {
        return Err(ParseError::TooDeep { format: Format::Html, limit: max_nesting });
    }
    Ok(html)
}

/// scraper's tree sink, recording how deep each node lies.
struct DepthSink {
    inner: HtmlTreeSink,
    /// Depth of each node placed in the tree (the document is 0).
    depths: RefCell<HashMap<NodeId, usize>>,
    limit: usize,
    exceeded: Cell<bool>,
}

impl DepthSink {
    fn depth(&self, node: &NodeId) -> usize {
        self.depths.borrow().get(node).copied().unwrap_or(0)
    }

    fn place(&self, child: &NodeOrText<NodeId>, depth: usize) {
        if let NodeOrText::AppendNode(id) = child {
            self.depths.borrow_mut().insert(*id, depth);
            if depth > self.limit {
                self.exceeded.set(true);
            }
        }
    }
}

impl TreeSink for DepthSink {
    type Output = Html;
    type Handle = NodeId;
    type ElemName<'a> = <HtmlTreeSink as TreeSink>::ElemName<'a>;

    fn finish(self) -> Html {
        self.inner.finish()
    }
    fn parse_error(&self, msg: Cow<'static, str>) {
        self.inner.parse_error(msg)
    }
    fn get_document(&self) -> NodeId {
        self.inner.get_document()
    }
    fn elem_name<'a>(&'a self, target: &'a NodeId) -> Self::ElemName<'a> {
        self.inner.elem_name(target)
    }
    fn create_element(&self, name: QualName, attrs: Vec<Attribute>, flags: ElementFlags) -> NodeId {
        self.inner.create_element(name, attrs, flags)
    }
    fn create_comment(&self, text: StrTendril) -> NodeId {
        self.inner.create_comment(text)
    }
    fn create_pi(&self, target: StrTendril, data: StrTendril) -> NodeId {
        self.inner.create_pi(target, data)
    }
    fn append(&self, parent: &NodeId, child: NodeOrText<NodeId>) {
        self.place(&child, self.depth(parent) + 1);
        self.inner.append(parent, child)
    }
    fn append_based_on_parent_node(
        &self,
        element: &NodeId,
        prev_element: &NodeId,
        child: NodeOrText<NodeId>,
    ) {
        let has_parent = self.inner.0.borrow().tree.get(*element).is_some_and(|n| n.parent().is_some());
        if has_parent {
            self.append_before_sibling(element, child)
        } else {
            self.append(prev_element, child)
        }
    }
    fn append_doctype_to_document(&self, name: StrTendril, public_id: StrTendril, system_id: StrTendril) {
        self.inner.append_doctype_to_document(name, public_id, system_id)
    }
    fn get_template_contents(&self, target: &NodeId) -> NodeId {
        self.inner.get_template_contents(target)
    }
    fn same_node(&self, x: &NodeId, y: &NodeId) -> bool {
        self.inner.same_node(x, y)
    }
    fn set_quirks_mode(&self, mode: QuirksMode) {
        self.inner.set_quirks_mode(mode)
    }
    fn append_before_sibling(&self, sibling: &NodeId, new_node: NodeOrText<NodeId>) {
        self.place(&new_node, self.depth(sibling));
        self.inner.append_before_sibling(sibling, new_node)
    }
    fn add_attrs_if_missing(&self, target: &NodeId, attrs: Vec<Attribute>) {
        self.inner.add_attrs_if_missing(target, attrs)
    }
    fn remove_from_parent(&self, target: &NodeId) {
        self.inner.remove_from_parent(target)
    }
    fn reparent_children(&self, node: &NodeId, new_parent: &NodeId) {
        let children: Vec<NodeId> = self
            .inner
            .0
            .borrow()
            .tree
            .get(*node)
            .map(|n| n.children().map(|c| c.id()).collect())
            .unwrap_or_default();
        let depth = self.depth(new_parent) + 1;
        for child in children {
            self.place(&NodeOrText::AppendNode(child), depth);
        }
        self.inner.reparent_children(node, new_parent)
    }
}

pub(crate) fn parse(
    source: &str,
    path_hint: Option<&Path>,
    max_nesting: usize,
) -> Result<Document, ParseError> {
    let html = parse_bounded(source, max_nesting)?;
    let mut w = Writer { out: String::new(), chars: 0, gap: Gap::None, pre: 0, cell: 0 };
    let mut headings: Vec<HeadingMark> = Vec::new();
    // Cells written so far in the current row of each open table row.
    let mut row_cells: Vec<usize> = Vec::new();

    for root in content_roots(&html) {
        w.gap(Gap::Paragraph);
        let mut stack = vec![Step::Enter(root)];
        while let Some(step) = stack.pop() {
            let node = match step {
                Step::Enter(node) => node,
                Step::Exit(exit) => {
                    match exit {
                        Exit::Block => w.gap(Gap::Paragraph),
                        Exit::Pre => {
                            w.pre -= 1;
                            w.gap(Gap::Paragraph);
                        }
                        Exit::Cell => w.cell -= 1,
                        Exit::Row => {
                            row_cells.pop();
                            w.gap(Gap::Line);
                        }
                        Exit::Heading { level, start } => {
                            let end = w.chars.max(start);
                            let title =
                                collapse_whitespace(&w.out[w.out.len() - slice_len(&w.out, end - start)..]);
                            if !title.is_empty() {
                                headings.push(HeadingMark { level, title, start, end });
                            }
                            w.gap(Gap::Paragraph);
                        }
                    }
                    continue;
                }
            };
            let el = match node.value() {
                Node::Text(t) => {
                    w.text(t);
                    continue;
                }
                Node::Element(el) => el,
                Node::Document | Node::Fragment => {
                    stack.extend(node.children().rev().map(Step::Enter));
                    continue;
                }
                _ => continue,
            };
            if is_dropped(el) {
                continue;
            }
            let name = el.name();
            let exit = if name == "br" {
                if w.pre > 0 {
                    w.flush_gap();
                    w.push_raw("\n");
                } else {
                    w.gap(Gap::Line);
                }
                None
            } else if name == "pre" {
                w.gap(Gap::Paragraph);
                w.pre += 1;
                Some(Exit::Pre)
            } else if w.pre > 0 {
                None
            } else if name == "tr" {
                w.gap(Gap::Line);
                w.flush_gap();
                row_cells.push(0);
                Some(Exit::Row)
            } else if name == "td" || name == "th" {
                if let Some(n) = row_cells.last_mut() {
                    if *n > 0 {
                        w.gap = Gap::None;
                        w.trim_trailing_spaces();
                        w.push_raw(" | ");
                    }
                    *n += 1;
                }
                w.cell += 1;
                Some(Exit::Cell)
            } else if let Some(level) = heading_level(name).filter(|_| w.cell == 0) {
                w.gap(Gap::Paragraph);
                w.flush_gap();
                Some(Exit::Heading { level, start: w.chars })
            } else if is_block(name) {
                w.gap(Gap::Paragraph);
                Some(Exit::Block)
            } else {
                None
            };
            if let Some(exit) = exit {
                stack.push(Step::Exit(exit));
            }
            stack.extend(node.children().rev().map(Step::Enter));
        }
    }

    let title = page_title(&html)
        .or_else(|| headings.iter().find(|h| h.level == 1).map(|h| clip_title(&h.title)))
        .unwrap_or_else(|| fallback_title(path_hint));
    let text = w.out.trim_end().to_string();
    let char_len = text.chars().count();
    let mut metadata = serde_json::Map::new();
    for (key, value) in page_metadata(&html) {
        metadata.insert(key, value.into());
    }
    finish(Document {
        title,
        format: Format::Html,
        sections: sections_from_headings(0, char_len, &headings),
        text,
        metadata,
        external_id: None,
    })
}

/// Byte length of the last `chars` characters of `s`.
fn slice_len(s: &str, chars: usize) -> usize {
    s.chars().rev().take(chars).map(char::len_utf8).sum()
}

/// The text of the first `<title>` outside `<svg>`. One pass.
fn page_title(html: &Html) -> Option<String> {
    let mut stack = vec![(html.tree.root(), false)];
    let mut found = None;
    while let Some((node, mut in_svg)) = stack.pop() {
        if let Some(e) = node.value().as_element() {
            if e.name() == "title" && !in_svg {
                found = Some(node);
                break;
            }
            in_svg |= e.name() == "svg";
        }
        stack.extend(node.children().rev().map(|c| (c, in_svg)));
    }
    let text: String =
        found?.descendants().filter_map(|n| n.value().as_text().map(|t| t.to_string())).collect();
    let text = collapse_whitespace(&text);
    (!text.is_empty()).then(|| clip_title(&text))
}

/// `lang`, and the `description`, `author` and `keywords` meta tags.
fn page_metadata(html: &Html) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for node in html.tree.root().descendants() {
        let Some(el) = node.value().as_element() else {
            continue;
        };
        if el.name() == "html" {
            if let Some(lang) = el.attr("lang").map(str::trim).filter(|l| !l.is_empty()) {
                out.push(("lang".to_string(), lang.to_string()));
            }
        } else if el.name() == "meta" {
            let name = el.attr("name").map(|n| n.trim().to_ascii_lowercase());
            let content = el.attr("content").map(collapse_whitespace);
            if let (Some(name), Some(content)) = (name, content) {
                if matches!(name.as_str(), "description" | "author" | "keywords")
                    && !content.is_empty()
                    && !out.iter().any(|(k, _)| *k == name)
                {
                    out.push((name, content));
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(d: &Document) -> Vec<(String, &str)> {
        d.sections.iter().map(|s| (s.heading_path.join(" > "), d.section_text(s))).collect()
    }

    #[test]
    fn blocks_inline_and_headings() {
        let html = r#"<!doctype html><html lang="en"><head><title> My
            Page </title><style>p{}</style><meta name="description" content="A page"></head>
            <body><nav>Menu Home</nav>
            <p>Intro   <b>bold</b>
            text &amp; more.</p>
            <h1>Chapter <em>One</em></h1><p>First<br>line two</p>
            <div hidden>secret</div><div aria-hidden="true">icon</div>
            <h2>Part</h2><ul><li>alpha</li><li>beta</li></ul>
            <script>var x = 1;</script>
            <h1>Chapter Two</h1><p>End.</p></body></html>"#;
        let d = parse(html, None, 512).unwrap();
        assert_eq!(d.title, "My Page");
        assert_eq!(d.metadata["lang"], "en");
        assert_eq!(d.metadata["description"], "A page");
        assert_eq!(
            d.text,
            "Intro bold text & more.\n\nChapter One\n\nFirst\nline two\n\nPart\n\nalpha\n\nbeta\n\nChapter Two\n\nEnd."
        );
        assert_eq!(
            texts(&d),
            vec![
                ("".into(), "Intro bold text & more."),
                ("Chapter One".into(), "First\nline two"),
                ("Chapter One > Part".into(), "alpha\n\nbeta"),
                ("Chapter Two".into(), "End."),
            ]
        );
    }

    #[test]
    fn main_only_pre_verbatim_and_tables() {
        let html = "<html><body><div class=sidebar>Sidebar junk</div><main>\
            <h2>Code</h2><pre>fn main() {\n    let  x = 1;\n}</pre>\
            <table><tr><th>Name</th><th>Age</th></tr><tr><td><p>Ann</p><p>Lee</p></td><td> 42 </td></tr></table>\
            </main><footer>Footer junk</footer></body></html>";
        let d = parse(html, Some(Path::new("page.html")), 512).unwrap();
        assert_eq!(d.title, "page");
        assert_eq!(d.text, "Code\n\nfn main() {\n    let  x = 1;\n}\n\nName | Age\nAnn Lee | 42");
        assert_eq!(d.sections[0].heading_path, vec!["Code"]);
    }

    #[test]
    fn articles_when_no_main_and_h1_title() {
        let html = "<body><header>Site</header><article><h1>Post</h1><p>One.</p></article>\
            <article><p>Two.</p></article><aside role=navigation>links</aside></body>";
        let d = parse(html, None, 512).unwrap();
        assert_eq!(d.title, "Post");
        assert_eq!(d.text, "Post\n\nOne.\n\nTwo.");
    }

    #[test]
    fn page_with_only_navigation_has_no_text() {
        let err = parse("<html><body><nav>Home About</nav></body></html>", None, 512).unwrap_err();
        assert!(matches!(err, ParseError::NoText { .. }));
    }

    #[test]
    fn deep_nesting_does_not_overflow_the_stack() {
        let html = format!("{}deep{}", "<div>".repeat(20_000), "</div>".repeat(20_000));
        let d = parse(&html, None, 30_000).unwrap();
        assert_eq!(d.text, "deep");
    }

    /// 100 000 nested `<div>`s took 13 s in html5ever (quadratic scope
    /// checks) before the depth bound; now refused at the limit, naming it.
    #[test]
    fn nesting_past_the_limit_is_refused() {
        let html = format!("<p>x</p>{}deep{}", "<div>".repeat(100_000), "</div>".repeat(100_000));
        let err = parse(&html, None, 512).unwrap_err();
        assert!(matches!(err, ParseError::TooDeep { format: Format::Html, limit: 512 }), "{err:?}");
        assert_eq!(err.to_string(), "HTML nests more than 512 levels deep (limit ingest.max_nesting)");
        // Within the limit the same shape parses.
        let html = format!("{}deep{}", "<div>".repeat(400), "</div>".repeat(400));
        assert_eq!(parse(&html, None, 512).unwrap().text, "deep");
    }

    /// Unclosed paragraphs and list items close themselves: they do not nest.
    #[test]
    fn many_unclosed_paragraphs_are_not_deep() {
        let html = format!("<body>{}</body>", "<p>para <b>b</b> <li>item".repeat(5_000));
        let d = parse(&html, None, 64).unwrap();
        assert!(d.text.starts_with("para b"), "{}", &d.text[..40]);
    }

    #[test]
    fn many_articles_and_titles_in_svg() {
        let mut html = String::from("<svg><title>icon</title></svg><title>Real</title>");
        for i in 0..2_000 {
            html.push_str(&format!("<article><article>inner {i}</article></article>"));
        }
        let d = parse(&html, None, 512).unwrap();
        assert_eq!(d.title, "Real");
        assert!(d.text.starts_with("inner 0\n\ninner 1"), "{}", &d.text[..30]);
    }
}
