//! DOCX (Office Open XML word processing): `word/document.xml` read with
//! quick-xml; `word/styles.xml` tells which paragraphs are headings;
//! `docProps/core.xml` gives the title and other properties.

use std::collections::HashMap;
use std::io::{Cursor, Read};
use std::path::Path;

use datafactory_core::document::{Document, Format};
use quick_xml::events::{BytesStart, Event};
use quick_xml::Reader;
use zip::result::ZipError;
use zip::ZipArchive;

use crate::{
    clip_title, collapse_whitespace, fallback_title, finish, sections_from_headings, HeadingMark, ParseError,
    ParseOptions,
};

const DOCUMENT: &str = "word/document.xml";
const STYLES: &str = "word/styles.xml";
const CORE: &str = "docProps/core.xml";

fn corrupt(detail: impl Into<String>) -> ParseError {
    ParseError::Corrupt { format: Format::Docx, detail: detail.into() }
}

/// Decompression allowance shared by all the parts read from one file.
struct Budget {
    limit: u64,
    remaining: u64,
}

impl Budget {
    fn too_large(&self) -> ParseError {
        ParseError::TooLarge { format: Format::Docx, limit: self.limit }
    }
}

type Archive<'a> = ZipArchive<Cursor<&'a [u8]>>;

/// The declared (uncompressed) size of a part, if the archive has it.
fn declared_size(zip: &mut Archive<'_>, name: &str) -> Result<Option<u64>, ParseError> {
    match zip.by_name(name) {
        Ok(f) => Ok(Some(f.size())),
        Err(ZipError::FileNotFound) => Ok(None),
        Err(e) => Err(corrupt(format!("cannot open {name}: {e}"))),
    }
}

/// Reads a part, never decompressing more than the budget allows.
fn read_part(zip: &mut Archive<'_>, name: &str, budget: &mut Budget) -> Result<Option<Vec<u8>>, ParseError> {
    let mut file = match zip.by_name(name) {
        Ok(f) => f,
        Err(ZipError::FileNotFound) => return Ok(None),
        Err(e) => return Err(corrupt(format!("cannot open {name}: {e}"))),
    };
    if file.size() > budget.remaining {
        return Err(budget.too_large());
    }
    let mut buf = Vec::new();
    (&mut file)
        .take(budget.remaining.saturating_add(1))
        .read_to_end(&mut buf)
        .map_err(|e| corrupt(format!("cannot decompress {name}: {e}")))?;
    let len = buf.len() as u64;
    if len > budget.remaining {
        return Err(budget.too_large());
    }
    budget.remaining -= len;
    Ok(Some(buf))
}

/// XML part bytes as a string: UTF-8 (BOM dropped) or UTF-16 with a BOM.
fn xml_text(bytes: Vec<u8>, name: &str) -> Result<String, ParseError> {
    if bytes.starts_with(&[0xFF, 0xFE]) || bytes.starts_with(&[0xFE, 0xFF]) {
        return Ok(crate::text::decode(&bytes).text);
    }
    let bytes = match bytes.strip_prefix(&[0xEF, 0xBB, 0xBF]) {
        Some(rest) => rest.to_vec(),
        None => bytes,
    };
    String::from_utf8(bytes).map_err(|_| corrupt(format!("{name} is not valid UTF-8")))
}

pub(crate) fn parse(
    bytes: &[u8],
    path_hint: Option<&Path>,
    opts: &ParseOptions,
) -> Result<Document, ParseError> {
    let mut zip = ZipArchive::new(Cursor::new(bytes))
        .map_err(|e| corrupt(format!("cannot read the ZIP container: {e}")))?;
    let mut budget = Budget { limit: opts.max_decompressed_bytes, remaining: opts.max_decompressed_bytes };
    // Refuse early on declared sizes, before decompressing anything.
    let mut declared = 0u64;
    for name in [DOCUMENT, STYLES, CORE] {
        declared = declared.saturating_add(declared_size(&mut zip, name)?.unwrap_or(0));
    }
    if declared > budget.limit {
        return Err(budget.too_large());
    }

    let document = read_part(&mut zip, DOCUMENT, &mut budget)?
        .ok_or_else(|| corrupt(format!("{DOCUMENT} is missing")))?;
    let document = xml_text(document, DOCUMENT)?;
    // Styles and properties are optional: a broken one is ignored.
    let styles = match read_part(&mut zip, STYLES, &mut budget)? {
        Some(b) => xml_text(b, STYLES).ok().and_then(|s| parse_styles(&s).ok()).unwrap_or_default(),
        None => Styles::default(),
    };
    let core = match read_part(&mut zip, CORE, &mut budget)? {
        Some(b) => xml_text(b, CORE).ok().and_then(|s| parse_core(&s).ok()).unwrap_or_default(),
        None => Vec::new(),
    };

    let blocks = parse_body(&document, &styles)
        .map_err(|e| corrupt(format!("{DOCUMENT} is not well-formed XML: {e}")))?;

    let mut text = String::new();
    let mut chars = 0usize;
    let mut headings = Vec::new();
    let mut first_heading_title = None;
    for block in &blocks {
        let body = block.text.trim();
        if body.is_empty() {
            continue;
        }
        if !text.is_empty() {
            text.push_str("\n\n");
            chars += 2;
        }
        let start = chars;
        text.push_str(body);
        chars += body.chars().count();
        let level = match block.kind {
            Kind::Title => Some(1),
            Kind::Heading(level) => Some(level),
            Kind::Body => None,
        };
        if let Some(level) = level {
            let title = collapse_whitespace(body);
            if level == 1 && first_heading_title.is_none() {
                first_heading_title = Some(clip_title(&title));
            }
            headings.push(HeadingMark { level, title, start, end: chars });
        }
    }

    let mut metadata = serde_json::Map::new();
    let mut core_title = None;
    for (key, value) in core {
        if key == "title" {
            core_title = Some(clip_title(&value));
        } else {
            metadata.insert(key, value.into());
        }
    }
    let title = core_title.or(first_heading_title).unwrap_or_else(|| fallback_title(path_hint));
    finish(Document {
        title,
        format: Format::Docx,
        sections: sections_from_headings(0, chars, &headings),
        text,
        metadata,
        external_id: None,
    })
}

// ---------------------------------------------------------------------------
// styles.xml

#[derive(Debug, Default)]
struct Style {
    name: Option<String>,
    outline_level: Option<u32>,
    based_on: Option<String>,
}

#[derive(Debug, Default)]
struct Styles {
    by_id: HashMap<String, Style>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Body,
    Title,
    /// 1 = outermost.
    Heading(u32),
}

/// "heading 2" -> 2, "Heading2" -> 2, "title" -> Title.
fn kind_from_name(name: &str) -> Option<Kind> {
    let lower = name.trim().to_ascii_lowercase();
    if lower == "title" {
        return Some(Kind::Title);
    }
    let rest = lower.strip_prefix("heading")?.trim_start();
    let level: u32 = rest.parse().ok()?;
    (1..=9).contains(&level).then_some(Kind::Heading(level))
}

/// `w:outlineLvl` is 0-based; 9 means body text.
fn kind_from_outline(level: u32) -> Kind {
    if level < 9 {
        Kind::Heading(level + 1)
    } else {
        Kind::Body
    }
}

impl Styles {
    fn kind(&self, style_id: &str) -> Kind {
        let mut id = style_id;
        for _ in 0..16 {
            let Some(style) = self.by_id.get(id) else {
                break;
            };
            if let Some(kind) = style.name.as_deref().and_then(kind_from_name) {
                return kind;
            }
            if let Some(level) = style.outline_level {
                return kind_from_outline(level);
            }
            match style.based_on.as_deref() {
                Some(parent) => id = parent,
                None => break,
            }
        }
        // No styles.xml, or a style it does not define: go by the id.
        kind_from_name(style_id).unwrap_or(Kind::Body)
    }
}

fn reader(xml: &str) -> Reader<&[u8]> {
    let mut reader = Reader::from_str(xml);
    reader.config_mut().expand_empty_elements = true;
    reader
}

fn local(e: &BytesStart<'_>) -> String {
    e.local_name().as_ref().to_string()
}

/// The value of the attribute with this local name (`w:val` -> "val").
fn attr(e: &BytesStart<'_>, name: &str) -> Option<String> {
    e.attributes().flatten().find_map(|a| {
        (a.key.local_name().as_ref() == name).then(|| {
            a.normalized_value(quick_xml::XmlVersion::Implicit1_0)
                .map(|v| v.into_owned())
                .unwrap_or_else(|_| a.value.clone().into_owned())
        })
    })
}

fn parse_styles(xml: &str) -> Result<Styles, quick_xml::Error> {
    let mut styles = Styles::default();
    let mut reader = reader(xml);
    let mut current: Option<(String, Style)> = None;
    loop {
        match reader.read_event()? {
            Event::Start(e) => match local(&e).as_str() {
                "style" => {
                    let is_paragraph = attr(&e, "type").is_none_or(|t| t == "paragraph");
                    current = match attr(&e, "styleId") {
                        Some(id) if is_paragraph => Some((id, Style::default())),
                        _ => None,
                    };
                }
                "name" => {
                    if let Some((_, s)) = current.as_mut() {
                        s.name = attr(&e, "val");
                    }
                }
                "basedOn" => {
                    if let Some((_, s)) = current.as_mut() {
                        s.based_on = attr(&e, "val");
                    }
                }
                "outlineLvl" => {
                    if let Some((_, s)) = current.as_mut() {
                        s.outline_level = attr(&e, "val").and_then(|v| v.trim().parse().ok());
                    }
                }
                _ => {}
            },
            Event::End(e) if e.local_name().as_ref() == "style" => {
                if let Some((id, style)) = current.take() {
                    styles.by_id.insert(id, style);
                }
            }
            Event::Eof => break,
            _ => {}
        }
    }
    Ok(styles)
}

// ---------------------------------------------------------------------------
// core.xml

/// (key, value) pairs of the core properties, keys in snake case.
fn parse_core(xml: &str) -> Result<Vec<(String, String)>, quick_xml::Error> {
    let mut out: Vec<(String, String)> = Vec::new();
    let mut reader = reader(xml);
    let mut current: Option<(&'static str, String)> = None;
    loop {
        match reader.read_event()? {
            Event::Start(e) => {
                let key = match local(&e).as_str() {
                    "title" => Some("title"),
                    "creator" => Some("creator"),
                    "subject" => Some("subject"),
                    "description" => Some("description"),
                    "keywords" => Some("keywords"),
                    "lastModifiedBy" => Some("last_modified_by"),
                    "created" => Some("created"),
                    "modified" => Some("modified"),
                    "category" => Some("category"),
                    "language" => Some("language"),
                    _ => None,
                };
                current = key.map(|k| (k, String::new()));
            }
            Event::Text(t) => {
                if let Some((_, value)) = current.as_mut() {
                    value.push_str(&t.xml10_content());
                }
            }
            Event::GeneralRef(r) => {
                if let Some((_, value)) = current.as_mut() {
                    push_entity(value, &r);
                }
            }
            Event::End(_) => {
                if let Some((key, value)) = current.take() {
                    let value = collapse_whitespace(&value);
                    if !value.is_empty() && !out.iter().any(|(k, _)| k == key) {
                        out.push((key.to_string(), value));
                    }
                }
            }
            Event::Eof => break,
            _ => {}
        }
    }
    Ok(out)
}

fn push_entity(out: &mut String, r: &quick_xml::events::BytesRef<'_>) {
    if r.is_char_ref() {
        if let Ok(Some(c)) = r.resolve_char_ref() {
            out.push(c);
        }
    } else if let Some(s) = quick_xml::escape::resolve_predefined_entity(r.as_ref()) {
        out.push_str(s);
    }
}

// ---------------------------------------------------------------------------
// document.xml

/// A top-level paragraph or table of the body, as text.
#[derive(Debug)]
struct Block {
    text: String,
    kind: Kind,
}

struct Para {
    text: String,
    style: Option<String>,
    outline_level: Option<u32>,
}

/// Open containers, innermost last.
enum Open {
    Para(Para),
    Table(Vec<String>),
    Row(Vec<String>),
    Cell(Vec<String>),
}

/// Elements whose content is not text of the document: alternate renderings
/// (the `mc:Choice` is read), field instructions, tracked formatting changes.
fn is_skipped(name: &str) -> bool {
    matches!(name, "Fallback" | "instrText" | "delInstrText" | "pPrChange" | "rPrChange" | "tblPrChange")
}

/// The innermost open paragraph, if that is what is innermost.
fn para(stack: &mut [Open]) -> Option<&mut Para> {
    match stack.last_mut() {
        Some(Open::Para(p)) => Some(p),
        _ => None,
    }
}

/// Pops the innermost container if `want` accepts it.
fn pop_if(stack: &mut Vec<Open>, want: fn(&Open) -> bool) -> Option<Open> {
    if stack.last().is_some_and(want) {
        stack.pop()
    } else {
        None
    }
}

/// Gives finished text to the innermost open container, or to the body.
fn deliver(stack: &mut [Open], blocks: &mut Vec<Block>, text: String, kind: Kind) {
    match stack.last_mut() {
        None => blocks.push(Block { text, kind }),
        Some(Open::Para(p)) => {
            let text = text.trim();
            if !text.is_empty() {
                if !p.text.is_empty() && !p.text.ends_with(char::is_whitespace) {
                    p.text.push(' ');
                }
                p.text.push_str(text);
            }
        }
        Some(Open::Cell(parts)) | Some(Open::Row(parts)) | Some(Open::Table(parts)) => {
            let text = collapse_whitespace(&text);
            if !text.is_empty() {
                parts.push(text);
            }
        }
    }
}

fn parse_body(xml: &str, styles: &Styles) -> Result<Vec<Block>, quick_xml::Error> {
    let mut reader = reader(xml);
    let mut blocks = Vec::new();
    let mut stack: Vec<Open> = Vec::new();
    let mut skip_depth = 0usize;
    let mut run_depth = 0usize;
    let mut ppr_depth = 0usize;
    let mut in_text = false;

    loop {
        let event = reader.read_event()?;
        if skip_depth > 0 {
            match event {
                Event::Start(_) => skip_depth += 1,
                Event::End(_) => skip_depth -= 1,
                Event::Eof => break,
                _ => {}
            }
            continue;
        }
        match event {
            Event::Start(e) => {
                let name = local(&e);
                match name.as_str() {
                    n if is_skipped(n) => skip_depth = 1,
                    "p" => {
                        stack.push(Open::Para(Para { text: String::new(), style: None, outline_level: None }))
                    }
                    "tbl" => stack.push(Open::Table(Vec::new())),
                    "tr" => stack.push(Open::Row(Vec::new())),
                    "tc" => stack.push(Open::Cell(Vec::new())),
                    "pPr" => ppr_depth += 1,
                    "pStyle" if ppr_depth > 0 => {
                        if let Some(p) = para(&mut stack) {
                            p.style = attr(&e, "val");
                        }
                    }
                    "outlineLvl" if ppr_depth > 0 => {
                        if let Some(p) = para(&mut stack) {
                            p.outline_level = attr(&e, "val").and_then(|v| v.trim().parse().ok());
                        }
                    }
                    "r" => run_depth += 1,
                    "t" if run_depth > 0 => in_text = true,
                    "tab" if run_depth > 0 && ppr_depth == 0 => {
                        if let Some(p) = para(&mut stack) {
                            p.text.push('\t');
                        }
                    }
                    "br" | "cr" if run_depth > 0 => {
                        if let Some(p) = para(&mut stack) {
                            p.text.push('\n');
                        }
                    }
                    "noBreakHyphen" if run_depth > 0 => {
                        if let Some(p) = para(&mut stack) {
                            p.text.push('-');
                        }
                    }
                    _ => {}
                }
            }
            Event::Text(t) if in_text => {
                if let Some(p) = para(&mut stack) {
                    p.text.push_str(&t.xml10_content());
                }
            }
            Event::CData(t) if in_text => {
                if let Some(p) = para(&mut stack) {
                    p.text.push_str(&t.into_inner());
                }
            }
            Event::GeneralRef(r) if in_text => {
                if let Some(p) = para(&mut stack) {
                    push_entity(&mut p.text, &r);
                }
            }
            Event::End(e) => match e.local_name().as_ref() {
                "t" => in_text = false,
                "r" => run_depth = run_depth.saturating_sub(1),
                "pPr" => ppr_depth = ppr_depth.saturating_sub(1),
                "p" => {
                    if let Some(Open::Para(p)) = pop_if(&mut stack, |o| matches!(o, Open::Para(_))) {
                        let kind = match p.outline_level {
                            Some(level) => kind_from_outline(level),
                            None => p.style.as_deref().map_or(Kind::Body, |s| styles.kind(s)),
                        };
                        // Headings only count in the body, not in tables or text boxes.
                        let kind = if stack.is_empty() { kind } else { Kind::Body };
                        deliver(&mut stack, &mut blocks, p.text, kind);
                    }
                }
                "tc" => {
                    if let Some(Open::Cell(parts)) = pop_if(&mut stack, |o| matches!(o, Open::Cell(_))) {
                        // An empty cell still takes its place in the row.
                        let text = parts.join(" ");
                        match stack.last_mut() {
                            Some(Open::Row(cells)) => cells.push(text),
                            _ => deliver(&mut stack, &mut blocks, text, Kind::Body),
                        }
                    }
                }
                "tr" => {
                    if let Some(Open::Row(cells)) = pop_if(&mut stack, |o| matches!(o, Open::Row(_))) {
                        let line = cells.join(" | ");
                        if !line.replace('|', "").trim().is_empty() {
                            deliver(&mut stack, &mut blocks, line, Kind::Body);
                        }
                    }
                }
                "tbl" => {
                    if let Some(Open::Table(rows)) = pop_if(&mut stack, |o| matches!(o, Open::Table(_))) {
                        let text = rows.join("\n");
                        match stack.last_mut() {
                            // A table in a cell or text box: flatten its rows.
                            Some(_) => deliver(&mut stack, &mut blocks, rows.join(" / "), Kind::Body),
                            None => blocks.push(Block { text, kind: Kind::Body }),
                        }
                    }
                }
                _ => {}
            },
            Event::Eof => break,
            _ => {}
        }
    }
    Ok(blocks)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    const W: &str = "http://schemas.openxmlformats.org/wordprocessingml/2006/main";

    fn docx(parts: &[(&str, &str)]) -> Vec<u8> {
        let mut buf = Cursor::new(Vec::new());
        {
            let mut zip = zip::ZipWriter::new(&mut buf);
            let opts =
                zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
            for (name, body) in parts {
                zip.start_file(*name, opts).unwrap();
                zip.write_all(body.as_bytes()).unwrap();
            }
            zip.finish().unwrap();
        }
        buf.into_inner()
    }

    fn body(inner: &str) -> String {
        format!(
            r#"<?xml version="1.0" encoding="UTF-8" standalone="yes"?><w:document xmlns:w="{W}"><w:body>{inner}</w:body></w:document>"#
        )
    }

    fn p(style: Option<&str>, text: &str) -> String {
        let ppr = style.map(|s| format!(r#"<w:pPr><w:pStyle w:val="{s}"/></w:pPr>"#)).unwrap_or_default();
        format!(r#"<w:p>{ppr}<w:r><w:t xml:space="preserve">{text}</w:t></w:r></w:p>"#)
    }

    fn parse_parts(parts: &[(&str, &str)]) -> Result<Document, ParseError> {
        parse(&docx(parts), Some(Path::new("report.docx")), &ParseOptions::default())
    }

    #[test]
    fn localised_style_ids_map_through_names_and_outline_levels() {
        let styles = format!(
            r#"<w:styles xmlns:w="{W}">
            <w:style w:type="paragraph" w:styleId="berschrift1"><w:name w:val="heading 1"/></w:style>
            <w:style w:type="paragraph" w:styleId="Kapitel"><w:name w:val="Kapitel"/><w:pPr><w:outlineLvl w:val="1"/></w:pPr></w:style>
            <w:style w:type="paragraph" w:styleId="Unterkapitel"><w:name w:val="Unterkapitel"/><w:basedOn w:val="Kapitel"/></w:style>
            <w:style w:type="paragraph" w:styleId="Titel"><w:name w:val="Title"/></w:style>
            </w:styles>"#
        );
        let doc = body(
            &[
                p(Some("Titel"), "Jahresbericht"),
                p(None, "Vorwort."),
                p(Some("berschrift1"), "Einleitung"),
                p(None, "Text &amp; mehr."),
                p(Some("Kapitel"), "Teil A"),
                p(None, "Inhalt A."),
                p(Some("Unterkapitel"), "Teil B"),
                p(None, "Inhalt B."),
            ]
            .concat(),
        );
        let d = parse_parts(&[(DOCUMENT, &doc), (STYLES, &styles)]).unwrap();
        assert_eq!(d.title, "Jahresbericht");
        let got: Vec<_> =
            d.sections.iter().map(|s| (s.heading_path.join(" > "), d.section_text(s))).collect();
        assert_eq!(
            got,
            vec![
                ("Jahresbericht".into(), "Vorwort."),
                ("Einleitung".into(), "Text & mehr."),
                ("Einleitung > Teil A".into(), "Inhalt A."),
                ("Einleitung > Teil B".into(), "Inhalt B."),
            ]
        );
    }

    #[test]
    fn runs_tabs_breaks_tables_and_core_properties() {
        let doc = body(concat!(
            r#"<w:p><w:pPr><w:tabs><w:tab w:val="left" w:pos="720"/></w:tabs></w:pPr>"#,
            r#"<w:r><w:t>a</w:t><w:tab/><w:t>b</w:t><w:br/><w:t>c</w:t></w:r>"#,
            r#"<w:r><w:instrText>PAGE</w:instrText></w:r><w:del><w:r><w:delText>gone</w:delText></w:r></w:del></w:p>"#,
            r#"<w:tbl><w:tr><w:tc><w:p><w:r><w:t>Name</w:t></w:r></w:p></w:tc><w:tc><w:p><w:r><w:t>Age</w:t></w:r></w:p></w:tc></w:tr>"#,
            r#"<w:tr><w:tc><w:p><w:r><w:t>Ann</w:t></w:r></w:p><w:p><w:r><w:t>Lee</w:t></w:r></w:p></w:tc><w:tc/></w:tr></w:tbl>"#,
            r#"<w:p><w:pPr><w:pStyle w:val="Heading2"/></w:pPr><w:r><w:t>Later</w:t></w:r></w:p><w:p><w:r><w:t>x</w:t></w:r></w:p>"#,
        ));
        let core = r#"<cp:coreProperties xmlns:cp="c" xmlns:dc="http://purl.org/dc/elements/1.1/"><dc:title>Core Title</dc:title><dc:creator>Ada</dc:creator></cp:coreProperties>"#;
        let d = parse_parts(&[(DOCUMENT, &doc), (CORE, core)]).unwrap();
        assert_eq!(d.title, "Core Title");
        assert_eq!(d.metadata["creator"], "Ada");
        assert_eq!(d.text, "a\tb\nc\n\nName | Age\nAnn Lee |\n\nLater\n\nx");
        assert_eq!(d.sections[1].heading_path, vec!["Later"]);
    }

    #[test]
    fn title_falls_back_to_stem() {
        let d = parse_parts(&[(DOCUMENT, &body(&p(None, "just text")))]).unwrap();
        assert_eq!(d.title, "report");
    }

    #[test]
    fn too_large_by_declared_and_by_actual_size() {
        let big = body(&p(None, &"x".repeat(100_000)));
        let bytes = docx(&[(DOCUMENT, &big)]);
        let opts = ParseOptions { max_decompressed_bytes: 10_000, ..ParseOptions::default() };
        let err = parse(&bytes, None, &opts).unwrap_err();
        assert!(matches!(err, ParseError::TooLarge { limit: 10_000, .. }), "{err:?}");
        assert!(err.to_string().contains("more than 10000 bytes"));
    }

    #[test]
    fn missing_document_and_bad_xml_are_corrupt() {
        let err = parse_parts(&[(DOCUMENT, "<w:document><w:body><w:p></w:body>")]).unwrap_err();
        assert!(matches!(err, ParseError::Corrupt { .. }), "{err:?}");
        let err = parse(b"PK\x03\x04garbage", None, &ParseOptions::default()).unwrap_err();
        assert!(matches!(err, ParseError::Corrupt { .. }), "{err:?}");
    }

    #[test]
    fn empty_document_has_no_text() {
        let err = parse_parts(&[(DOCUMENT, &body("<w:p/>"))]).unwrap_err();
        assert!(matches!(err, ParseError::NoText { .. }), "{err:?}");
    }
}
