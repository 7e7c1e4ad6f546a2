//! Markdown: the raw Markdown is the text; headings cut it into sections.

use std::path::Path;

use datafactory_core::document::{Document, Format, Section};
use pulldown_cmark::{Event, MetadataBlockKind, Options, Parser, Tag, TagEnd};

use crate::{
    byte_to_char_offsets, clip_title, collapse_whitespace, fallback_title, finish, first_line_title,
    sections_from_headings, HeadingMark, ParseError,
};

/// What a scan of Markdown found, in character offsets.
pub(crate) struct Scan {
    pub sections: Vec<Section>,
    /// Raw YAML front matter (between the `---` lines).
    pub front_matter: Option<String>,
    /// `title:` of the front matter, if it is a plain scalar.
    pub front_matter_title: Option<String>,
    pub first_h1: Option<String>,
    /// Character offset where the body starts (after front matter).
    pub body_start: usize,
}

fn options() -> Options {
    Options::ENABLE_YAML_STYLE_METADATA_BLOCKS
        | Options::ENABLE_TABLES
        | Options::ENABLE_FOOTNOTES
        | Options::ENABLE_STRIKETHROUGH
        | Options::ENABLE_TASKLISTS
        | Options::ENABLE_HEADING_ATTRIBUTES
}

/// Finds front matter and top-level headings (ATX and setext) and cuts the
/// text into sections. Block quotes, lists and other containers nested deeper
/// than `max_nesting` are refused ([`ParseError::TooDeep`]).
pub(crate) fn scan(text: &str, max_nesting: usize) -> Result<Scan, ParseError> {
    struct RawHeading {
        level: u32,
        title: String,
        start: usize,
        end: usize,
    }
    let mut headings: Vec<RawHeading> = Vec::new();
    let mut front: Option<(usize, usize)> = None;
    let mut front_matter: Option<String> = None;
    let mut container_depth = 0usize;
    let mut in_heading: Option<RawHeading> = None;
    let mut in_metadata = false;

    for (event, range) in Parser::new_ext(text, options()).into_offset_iter() {
        match event {
            Event::Start(Tag::MetadataBlock(MetadataBlockKind::YamlStyle)) => {
                in_metadata = true;
                if front.is_none() && range.start == 0 {
                    front = Some((range.start, range.end));
                }
            }
            Event::End(TagEnd::MetadataBlock(_)) => in_metadata = false,
            Event::Text(t) if in_metadata && front.is_some() && front_matter.is_none() => {
                front_matter = Some(t.to_string());
            }
            Event::Text(_) if in_metadata => {}
            Event::Start(Tag::Heading { level, .. }) if container_depth == 0 => {
                in_heading = Some(RawHeading {
                    level: level as u32,
                    title: String::new(),
                    start: range.start,
                    end: range.end,
                });
            }
            Event::End(TagEnd::Heading(_)) => {
                if let Some(h) = in_heading.take() {
                    headings.push(h);
                }
            }
            Event::Text(t) | Event::Code(t) | Event::InlineMath(t) => {
                if let Some(h) = in_heading.as_mut() {
                    h.title.push_str(&t);
                }
            }
            Event::SoftBreak | Event::HardBreak => {
                if let Some(h) = in_heading.as_mut() {
                    h.title.push(' ');
                }
            }
            Event::Start(
                Tag::BlockQuote(_)
                | Tag::List(_)
                | Tag::Item
                | Tag::FootnoteDefinition(_)
                | Tag::DefinitionList
                | Tag::Table(_),
            ) => {
                container_depth += 1;
                if container_depth > max_nesting {
                    return Err(ParseError::TooDeep { format: Format::Markdown, limit: max_nesting });
                }
            }
            Event::End(
                TagEnd::BlockQuote(_)
                | TagEnd::List(_)
                | TagEnd::Item
                | TagEnd::FootnoteDefinition
                | TagEnd::DefinitionList
                | TagEnd::Table,
            ) => container_depth = container_depth.saturating_sub(1),
            _ => {}
        }
    }

    // Byte offsets -> character offsets, in one pass.
    let body_start_byte = front.map_or(0, |(_, end)| end.min(text.len()));
    let mut positions = vec![body_start_byte, text.len()];
    for h in &headings {
        positions.push(h.start);
        positions.push(h.end);
    }
    let mut sorted = positions.clone();
    sorted.sort_unstable();
    sorted.dedup();
    let chars = byte_to_char_offsets(text, &sorted);
    let to_char = |b: usize| chars[sorted.binary_search(&b).unwrap_or(0)];

    let body_start = to_char(body_start_byte);
    let body_end = to_char(text.len());
    let mut first_h1 = None;
    let marks: Vec<HeadingMark> = headings
        .into_iter()
        .filter_map(|h| {
            let title = collapse_whitespace(&h.title);
            if title.is_empty() || h.start < body_start_byte {
                return None;
            }
            if h.level == 1 && first_h1.is_none() {
                first_h1 = Some(clip_title(&title));
            }
            Some(HeadingMark { level: h.level, title, start: to_char(h.start), end: to_char(h.end) })
        })
        .collect();
    let front_matter_title = front_matter.as_deref().and_then(yaml_title);
    Ok(Scan {
        sections: sections_from_headings(body_start, body_end, &marks),
        front_matter,
        front_matter_title,
        first_h1,
        body_start,
    })
}

/// `title:` of simple YAML front matter: a plain or quoted one-line scalar.
fn yaml_title(yaml: &str) -> Option<String> {
    for line in yaml.lines() {
        let Some(value) = line.strip_prefix("title:") else {
            continue;
        };
        let value = value.trim();
        let value = if value.len() >= 2
            && ((value.starts_with('"') && value.ends_with('"'))
                || (value.starts_with('\'') && value.ends_with('\'')))
        {
            &value[1..value.len() - 1]
        } else {
            // Drop a trailing comment from a plain scalar.
            value.split(" #").next().unwrap_or("").trim()
        };
        if value.is_empty() || value.starts_with(['|', '>', '[', '{', '&', '*']) {
            return None;
        }
        return Some(clip_title(value));
    }
    None
}

/// The title of Markdown without front matter title or H1: the first line,
/// without `#` marks.
fn first_line(text: &str, body_start: usize) -> Option<String> {
    let body: String = text.chars().skip(body_start).take(4096).collect();
    let line = body.lines().map(str::trim).find(|l| !l.is_empty())?;
    first_line_title(line.trim_start_matches('#'))
}

pub(crate) fn parse(
    text: String,
    path_hint: Option<&Path>,
    max_nesting: usize,
) -> Result<Document, ParseError> {
    let scan = scan(&text, max_nesting)?;
    if text.chars().skip(scan.body_start).all(char::is_whitespace) {
        // Only front matter: nothing to index.
        return Err(ParseError::NoText { format: Format::Markdown });
    }
    let title = scan
        .front_matter_title
        .clone()
        .or_else(|| scan.first_h1.clone())
        .or_else(|| first_line(&text, scan.body_start))
        .unwrap_or_else(|| fallback_title(path_hint));
    let mut metadata = serde_json::Map::new();
    if let Some(fm) = scan.front_matter {
        metadata.insert("front_matter".to_string(), fm.into());
    }
    finish(Document {
        title,
        format: Format::Markdown,
        text,
        sections: scan.sections,
        metadata,
        external_id: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(d: &Document) -> Vec<(String, &str)> {
        d.sections.iter().map(|s| (s.heading_path.join(" > "), d.section_text(s))).collect()
    }

    #[test]
    fn headings_nest_and_code_fences_are_not_headings() {
        let md = "Intro text.\n\n# Guide\n\nAbout.\n\n## Install\n\n```sh\n# not a heading\ncargo install\n```\n\n## Use\n\nRun it.\n\n# Other\nEnd.\n";
        let d = parse(md.into(), None, 512).unwrap();
        assert_eq!(d.title, "Guide");
        assert_eq!(
            texts(&d),
            vec![
                ("".into(), "Intro text."),
                ("Guide".into(), "About."),
                ("Guide > Install".into(), "```sh\n# not a heading\ncargo install\n```"),
                ("Guide > Use".into(), "Run it."),
                ("Other".into(), "End."),
            ]
        );
    }

    #[test]
    fn setext_headings_and_unicode_offsets() {
        let md = "Überblick\n=========\n\nGrüße aus Köln.\n\nDetails\n-------\nMehr über ä.\n";
        let d = parse(md.into(), None, 512).unwrap();
        assert_eq!(d.title, "Überblick");
        assert_eq!(
            texts(&d),
            vec![("Überblick".into(), "Grüße aus Köln."), ("Überblick > Details".into(), "Mehr über ä."),]
        );
    }

    #[test]
    fn front_matter_gives_title_and_belongs_to_no_section() {
        let md = "---\ntitle: \"Field Notes\"\ntags: [a, b]\n---\n\nSome body.\n\n# Heading\n\nMore.\n";
        let d = parse(md.into(), None, 512).unwrap();
        assert_eq!(d.title, "Field Notes");
        assert_eq!(d.metadata["front_matter"].as_str().unwrap(), "title: \"Field Notes\"\ntags: [a, b]\n");
        assert_eq!(texts(&d), vec![("".into(), "Some body."), ("Heading".into(), "More.")]);
    }

    #[test]
    fn front_matter_only_has_no_text() {
        let err = parse("---\ntitle: x\n---\n\n".into(), None, 512).unwrap_err();
        assert!(matches!(err, ParseError::NoText { .. }));
    }

    #[test]
    fn headings_inside_blockquotes_and_lists_do_not_cut() {
        let md = "# Top\n\n> # quoted\n> text\n\n- # in list\n\nafter\n";
        let d = parse(md.into(), None, 512).unwrap();
        assert_eq!(d.sections.len(), 1);
        assert_eq!(d.sections[0].heading_path, vec!["Top"]);
    }

    #[test]
    fn title_falls_back_to_first_line_then_stem() {
        let d = parse("## Sub only\n\ntext\n".into(), None, 512).unwrap();
        assert_eq!(d.title, "Sub only");
        let long = format!("{}\n", "x".repeat(300));
        let d = parse(long, Some(Path::new("notes/readme.md")), 512).unwrap();
        assert_eq!(d.title, "readme");
    }

    #[test]
    fn heading_with_inline_code() {
        let d = parse("# The `DiffExecutor` type\n\nbody\n".into(), None, 512).unwrap();
        assert_eq!(d.title, "The DiffExecutor type");
        assert_eq!(d.sections[0].heading_path, vec!["The DiffExecutor type"]);
    }

    #[test]
    fn nesting_past_the_limit_is_refused() {
        for md in [format!("{} deep\n", ">".repeat(100_000)), format!("{}deep\n", "- ".repeat(100_000))] {
            let err = parse(md, None, 512).unwrap_err();
            assert!(matches!(err, ParseError::TooDeep { format: Format::Markdown, limit: 512 }), "{err:?}");
            assert_eq!(
                err.to_string(),
                "Markdown nests more than 512 levels deep (limit ingest.max_nesting)"
            );
        }
        let d = parse(format!("{} deep\n", ">".repeat(100)), None, 512).unwrap();
        assert!(d.text.ends_with("deep\n"));
    }
}
