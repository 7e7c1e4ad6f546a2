//! The context made without an LLM: document title, heading path, and the
//! first sentence of the chunk's section (or of the document).

use datafactory_core::document::char_to_byte_offsets;
use datafactory_core::{Chunk, Document};

/// Version of the heuristic, recorded with each context it makes.
pub const HEURISTIC_VERSION: &str = "heuristic-v1";

const MAX_SENTENCE_CHARS: usize = 300;

/// The heuristic contexts of one document's chunks. Everything a context
/// needs from the document (each section's first sentence, the document's)
/// is found once, in one pass over the text, so a document's contexts cost
/// time linear in its size, whatever its number of chunks (a per-chunk scan
/// of the section was quadratic: a 50 MB single-section file ran for hours).
pub struct HeuristicContexts<'a> {
    document: &'a Document,
    /// The first sentence of each section, by the section's index.
    section_sentences: Vec<Option<String>>,
    /// Sections ordered and apart, so a chunk's section is found by bisection.
    ordered: bool,
    whole: Option<String>,
}

impl<'a> HeuristicContexts<'a> {
    pub fn new(document: &'a Document) -> Self {
        let sections = &document.sections;
        let bytes = byte_offsets(&document.text, sections.iter().flat_map(|s| [s.start, s.end]));
        let section_sentences = sections
            .iter()
            .map(|s| {
                let (start, end) = (bytes(s.start), bytes(s.end));
                first_sentence(if start < end { &document.text[start..end] } else { "" })
            })
            .collect();
        let ordered = sections.windows(2).all(|w| w[0].start <= w[0].end && w[0].end <= w[1].start);
        HeuristicContexts { document, section_sentences, ordered, whole: first_sentence(&document.text) }
    }

    /// The index of the first section that holds the chunk's start.
    fn section_of(&self, chunk: &Chunk) -> Option<usize> {
        let sections = &self.document.sections;
        let holds =
            |s: &datafactory_core::Section| s.start <= chunk.start && chunk.start < s.end.max(s.start + 1);
        if self.ordered {
            let i = sections.partition_point(|s| s.end.max(s.start + 1) <= chunk.start);
            sections.get(i).filter(|s| holds(s)).map(|_| i)
        } else {
            sections.iter().position(holds)
        }
    }

    pub fn context(&self, chunk: &Chunk) -> String {
        let mut parts = Vec::new();
        let title = self.document.title.trim();
        if !title.is_empty() {
            parts.push(title.to_string());
        }
        if !chunk.heading_path.is_empty() {
            parts.push(chunk.heading_path.join(" > "));
        }
        let not_the_chunks_start = |s: &&String| !chunk.text.trim_start().starts_with(s.as_str());
        let sentence = self
            .section_of(chunk)
            .and_then(|i| self.section_sentences[i].as_ref())
            .filter(not_the_chunks_start)
            .or_else(|| self.whole.as_ref().filter(not_the_chunks_start));
        if let Some(s) = sentence {
            parts.push(s.clone());
        }
        parts.join(". ")
    }
}

/// Byte offsets of the given character offsets of `text`, in one pass: a
/// lookup from a character offset (one of those given; past the end: the
/// text's length) to its byte offset.
fn byte_offsets(text: &str, chars: impl Iterator<Item = usize>) -> impl Fn(usize) -> usize {
    let mut wanted: Vec<usize> = chars.collect();
    wanted.sort_unstable();
    wanted.dedup();
    let found = char_to_byte_offsets(text, &wanted);
    let len = text.len();
    move |c| wanted.binary_search(&c).map_or(len, |k| found[k])
}

/// The first sentence of a text, skipping heading-like lines (a line without
/// sentence punctuation, e.g. `# Title`); at most ~300 characters.
///
/// Only the first `MAX_SENTENCE_CHARS + 2` characters of the joined lines can
/// decide the answer (a sentence that ends later is cut to
/// `MAX_SENTENCE_CHARS` anyway, and the character after a full stop is inside
/// them), so no more is read or copied.
fn first_sentence(text: &str) -> Option<String> {
    const LOOK: usize = MAX_SENTENCE_CHARS + 2;
    let mut body = String::new();
    let mut chars = 0;
    // Whether text is left after the window: the lines are trimmed, so what
    // is left holds more than whitespace, and a sentence still running at
    // the window's end is longer than the cut, even if the window ends in
    // spaces (trimming those would hide that it runs on).
    let mut cut = false;
    let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#'));
    for line in lines.by_ref() {
        if chars > 0 {
            body.push(' ');
            chars += 1;
        }
        let mut line_chars = line.chars();
        for c in line_chars.by_ref().take(LOOK.saturating_sub(chars)) {
            body.push(c);
            chars += 1;
        }
        if chars >= LOOK {
            cut = line_chars.next().is_some();
            break;
        }
    }
    cut = cut || lines.next().is_some();
    let body = if cut { body.as_str() } else { body.trim_end() };
    if body.is_empty() {
        return None;
    }
    let mut end = body.len();
    for (i, c) in body.char_indices() {
        if matches!(c, '.' | '!' | '?' | '。') {
            let next = body[i + c.len_utf8()..].chars().next();
            if next.is_none_or(char::is_whitespace) {
                end = i + c.len_utf8();
                break;
            }
        }
    }
    let mut s: String = body[..end].to_string();
    if s.chars().count() > MAX_SENTENCE_CHARS {
        s = s.chars().take(MAX_SENTENCE_CHARS).collect::<String>() + "…";
    }
    Some(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafactory_core::{Format, Section};
    use proptest::prelude::*;

    #[test]
    fn title_heading_and_first_sentence() {
        let text = "# Guide\n\nInstall it first. Then run it.\n\nSecond paragraph here.";
        let doc = Document {
            title: "Guide".into(),
            text: text.into(),
            sections: vec![Section {
                heading_path: vec!["Guide".into()],
                start: 0,
                end: text.chars().count(),
                page: None,
            }],
            format: Format::Markdown,
            metadata: Default::default(),
            external_id: None,
        };
        let chunk = Chunk {
            ordinal: 1,
            heading_path: vec!["Guide".into(), "Setup".into()],
            text: "Second paragraph here.".into(),
            start: 50,
            end: 72,
            page: None,
            token_count: 3,
            context: None,
        };
        assert_eq!(HeuristicContexts::new(&doc).context(&chunk), "Guide. Guide > Setup. Install it first.");
    }

    #[test]
    fn a_sentence_running_on_past_the_window_in_spaces_is_still_cut() {
        // 300 characters, spaces up to and past the window's end, then the
        // full stop: the sentence is longer than the cut, so it ends in "…".
        let text = format!("{}     .", "a".repeat(300));
        assert_eq!(first_sentence(&text), Some(format!("{}…", "a".repeat(300))));
        assert_eq!(first_sentence(&text), reference_first_sentence(&text));
        // The same sentence with nothing after the spaces is not cut.
        let text = format!("{}     ", "a".repeat(300));
        assert_eq!(first_sentence(&text), Some("a".repeat(300)));
        assert_eq!(first_sentence(&text), reference_first_sentence(&text));
    }

    /// The definitions before contexts were made per document: the section
    /// looked up per chunk, the whole section joined and scanned.
    fn reference_first_sentence(text: &str) -> Option<String> {
        let body: String = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .collect::<Vec<_>>()
            .join(" ");
        let body = body.trim();
        if body.is_empty() {
            return None;
        }
        let mut end = body.len();
        for (i, c) in body.char_indices() {
            if matches!(c, '.' | '!' | '?' | '。')
                && body[i + c.len_utf8()..].chars().next().is_none_or(char::is_whitespace)
            {
                end = i + c.len_utf8();
                break;
            }
        }
        let mut s = body[..end].to_string();
        if s.chars().count() > MAX_SENTENCE_CHARS {
            s = s.chars().take(MAX_SENTENCE_CHARS).collect::<String>() + "…";
        }
        Some(s)
    }

    fn reference_context(document: &Document, chunk: &Chunk) -> String {
        let mut parts = Vec::new();
        if !document.title.trim().is_empty() {
            parts.push(document.title.trim().to_string());
        }
        if !chunk.heading_path.is_empty() {
            parts.push(chunk.heading_path.join(" > "));
        }
        let section = document
            .sections
            .iter()
            .find(|s| s.start <= chunk.start && chunk.start < s.end.max(s.start + 1))
            .map(|s| document.section_text(s));
        let fresh = |s: &String| !chunk.text.trim_start().starts_with(s.as_str());
        let sentence = section
            .and_then(reference_first_sentence)
            .filter(fresh)
            .or_else(|| reference_first_sentence(&document.text).filter(fresh));
        parts.extend(sentence);
        parts.join(". ")
    }

    /// Text made of words, sentence ends, headings, blank lines, spaces and
    /// multi-byte characters, long enough to cross the 300-character cut.
    fn text_strategy() -> impl Strategy<Value = String> {
        // Sentence ends are rare, so sentences run past the cut too.
        let piece = prop_oneof![
            20 => "[a-z]{1,60}",
            6 => Just(" ".to_string()),
            2 => Just("é".to_string()),
            2 => Just("数".to_string()),
            1 => Just(". ".to_string()),
            1 => Just(".".to_string()),
            1 => Just("! ".to_string()),
            1 => Just("。".to_string()),
            1 => Just("\n".to_string()),
            1 => Just("\n# Heading\n".to_string()),
            1 => Just("\n\n".to_string()),
        ];
        proptest::collection::vec(piece, 0..200).prop_map(|p| p.concat())
    }

    proptest! {
        #[test]
        fn first_sentence_reads_only_what_decides_it(text in text_strategy()) {
            prop_assert_eq!(first_sentence(&text), reference_first_sentence(&text));
        }

        #[test]
        fn contexts_per_document_equal_contexts_per_chunk(
            text in text_strategy(),
            cuts in proptest::collection::vec(0usize..2000, 0..8),
            shuffle in any::<bool>(),
            chunk_starts in proptest::collection::vec(0usize..2000, 1..12),
        ) {
            let len = text.chars().count();
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (len + 1)).collect();
            cuts.push(0);
            cuts.push(len);
            cuts.sort_unstable();
            cuts.dedup();
            let mut sections: Vec<Section> = cuts
                .windows(2)
                .map(|w| Section { heading_path: vec![], start: w[0], end: w[1], page: None })
                .collect();
            if shuffle {
                sections.reverse();
            }
            let document = Document {
                title: "T".into(),
                text: text.clone(),
                sections,
                format: Format::Text,
                metadata: Default::default(),
                external_id: None,
            };
            let contexts = HeuristicContexts::new(&document);
            for start in chunk_starts {
                let start = start % (len + 1);
                let end = (start + 40).min(len);
                let chunk = Chunk {
                    ordinal: 0,
                    heading_path: vec!["H".into()],
                    text: datafactory_core::document::slice_chars(&text, start, end).to_string(),
                    start,
                    end,
                    page: None,
                    token_count: 1,
                    context: None,
                };
                prop_assert_eq!(contexts.context(&chunk), reference_context(&document, &chunk));
            }
        }
    }
}
