//! Is an LLM's answer a usable context? A server can answer 200 with text
//! that must not go into the index: a base model (not instruction-tuned)
//! continues the prompt instead of answering it, and a small or badly
//! templated model loops. Measured with the real Gemma 3 270M base model
//! through llama-server (`crates/ingest/tests/real_llm.rs`): every chunk of
//! a handbook got the same answer, `<document>` followed by the document's
//! first 400 characters, which would have been prepended to every chunk,
//! embedded and indexed. Such an answer is refused here; the chunk gets a
//! heuristic context and the run counts it as `unusable`.
//!
//! Each check names what it saw, so the warning tells the operator what
//! their model did. They are deliberately narrow: a context that quotes a
//! heading or a term of the document is what the prompt asks for.

use crate::prompt::Template;
use std::collections::HashMap;

/// A verbatim run of the prompt this long (in characters, whitespace
/// collapsed) at the start of an answer is a copy, not a context.
const COPIED_CHARS: usize = 120;
/// A line or sentence of at least this many characters seen
/// [`REPEATS_LONG`] times, or any line seen [`REPEATS_SHORT`] times, is a loop.
const LONG_SEGMENT: usize = 10;
const REPEATS_LONG: usize = 3;
const REPEATS_SHORT: usize = 5;
/// Template sentences at least this long are framing an answer must not repeat.
const FRAMING_SENTENCE: usize = 24;

/// Judges answers to one template's prompts.
#[derive(Debug, Clone)]
pub struct Judge {
    /// The template's own markup (`<document>`, `</chunk>`) and its longer
    /// sentences: text of the prompt's frame, never of the document.
    framing: Vec<String>,
}

impl Judge {
    pub fn new(template: &Template) -> Judge {
        let mut framing = Vec::new();
        for line in template.text().lines() {
            let line = line.replace("{document}", "").replace("{chunk}", "");
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            if is_tag(line) {
                framing.push(line.to_string());
                continue;
            }
            for sentence in sentences(line) {
                if sentence.chars().count() >= FRAMING_SENTENCE {
                    framing.push(sentence.to_string());
                }
            }
        }
        framing.sort();
        framing.dedup();
        Judge { framing }
    }

    /// Why `answer` (to `prompt`) is not a usable context, or None.
    pub fn unusable(&self, answer: &str, prompt: &str) -> Option<String> {
        let answer = answer.trim();
        if answer.is_empty() {
            return Some("empty answer".into());
        }
        if let Some(f) = self.framing.iter().find(|f| answer.contains(f.as_str())) {
            return Some(format!("it repeats the prompt's own text ({})", shorten(f)));
        }
        if let Some((segment, n)) = repeated(answer) {
            return Some(format!("it repeats itself (\"{}\" {n} times)", shorten(segment)));
        }
        let head: String = collapse(answer).chars().take(COPIED_CHARS).collect();
        if head.chars().count() == COPIED_CHARS && collapse(prompt).contains(&head) {
            return Some(format!(
                "it copies the prompt instead of describing the chunk (its first {COPIED_CHARS} characters \
                 are the prompt's, verbatim)"
            ));
        }
        None
    }
}

/// `<document>`, `</chunk>`: a line that is one markup tag.
fn is_tag(line: &str) -> bool {
    line.len() >= 3
        && line.starts_with('<')
        && line.ends_with('>')
        && !line[1..line.len() - 1].contains(['<', '>'])
}

/// The sentences of a line: cut after `.`, `!` or `?` followed by a space.
fn sentences(line: &str) -> impl Iterator<Item = &str> {
    let mut rest = line;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let cut = rest
            .match_indices(['.', '!', '?'])
            .map(|(i, _)| i + 1)
            .find(|&i| rest[i..].starts_with(char::is_whitespace))
            .unwrap_or(rest.len());
        let (s, r) = rest.split_at(cut);
        rest = r.trim_start();
        Some(s.trim())
    })
}

/// The line or sentence an answer repeats most, if it loops.
fn repeated(answer: &str) -> Option<(&str, usize)> {
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for line in answer.lines().map(str::trim).filter(|l| !l.is_empty()) {
        *counts.entry(line).or_default() += 1;
        let mut parts = sentences(line).peekable();
        let first = parts.next();
        if parts.peek().is_some() {
            // A line of several sentences: count each, too.
            for s in first.into_iter().chain(parts) {
                *counts.entry(s).or_default() += 1;
            }
        }
    }
    counts
        .into_iter()
        .filter(|(s, n)| *n >= REPEATS_SHORT || (*n >= REPEATS_LONG && s.chars().count() >= LONG_SEGMENT))
        .max_by_key(|&(s, n)| (n, s.len()))
}

/// Whitespace runs as one space.
fn collapse(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn shorten(s: &str) -> String {
    const MAX: usize = 60;
    if s.chars().count() <= MAX {
        s.to_string()
    } else {
        format!("{}…", s.chars().take(MAX).collect::<String>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn builtin() -> Judge {
        Judge::new(&Template::builtin())
    }

    const DOCUMENT: &str = "---\ntitle: Release Engineering Handbook\nowner: build-team\n---\n\n\
        This handbook describes how the build team prepares, checks and ships a\nrelease. It is \
        written for engineers who join the rotation for the first\ntime and for anyone who wants \
        to know why a release takes the time it takes.";

    #[test]
    fn the_builtin_templates_framing_is_its_tags_and_long_sentences() {
        let j = builtin();
        for tag in ["<document>", "</document>", "<chunk>", "</chunk>"] {
            assert!(j.framing.iter().any(|f| f == tag), "{tag} missing from {:?}", j.framing);
        }
        assert!(j.framing.iter().any(|f| f.starts_with("Here is the chunk we want to situate")));
        assert!(j.framing.iter().any(|f| f == "Answer only with the succinct context and nothing else."));
        // Short pieces are not framing: an answer may well say "context".
        assert!(j.framing.iter().all(|f| f.chars().count() >= FRAMING_SENTENCE || is_tag(f)));
    }

    #[test]
    fn a_real_context_is_usable() {
        let prompt =
            Template::builtin().render(DOCUMENT, "It is written for engineers who join the rotation");
        for answer in [
            "This chunk is from the introduction of the Release Engineering Handbook; it says who the handbook is for.",
            "Context: the handbook's audience (engineers new to the release rotation).",
            "Introduction of the build team's release handbook.",
        ] {
            assert_eq!(builtin().unusable(answer, &prompt), None, "{answer}");
        }
    }

    #[test]
    fn what_the_gemma_base_model_answered_is_refused() {
        // The answer Gemma 3 270M (base) gave every chunk of tests/fixtures/sample.md.
        let chunk = "It is written for engineers who join the rotation";
        let prompt = Template::builtin().render(DOCUMENT, chunk);
        let echo = format!("<document>\n{}", &DOCUMENT[..200]);
        let why = builtin().unusable(&echo, &prompt).unwrap();
        assert!(why.contains("<document>"), "{why}");
        // The same copy without the tag is still a copy.
        let why = builtin().unusable(&DOCUMENT[..200], &prompt).unwrap();
        assert!(why.contains("copies the prompt"), "{why}");
        // Its loop under the ChatML fallback template.
        let why = builtin().unusable(&"<|im_end|>\n".repeat(20), &prompt).unwrap();
        assert!(why.contains("repeats itself") && why.contains("<|im_end|>"), "{why}");
        let why = builtin()
            .unusable(
                "The series will be aired on the 10th of June 2023. The series will be aired on the 10th \
                 of June 2023.\nThe series will be aired on the 10th of June 2023.",
                &prompt,
            )
            .unwrap();
        assert!(why.contains("3 times"), "{why}");
    }

    #[test]
    fn echoing_the_instruction_is_refused_but_short_quotes_of_the_document_are_not() {
        let prompt = Template::builtin().render(DOCUMENT, "the rotation");
        let why = builtin()
            .unusable("Answer only with the succinct context and nothing else. The handbook.", &prompt)
            .unwrap();
        assert!(why.contains("prompt's own text"), "{why}");
        // A quote under the copy threshold is a context that names its section.
        let text = collapse(DOCUMENT);
        let start = text.find("This handbook").unwrap();
        let quote = &text[start..start + COPIED_CHARS - 1];
        assert_eq!(builtin().unusable(quote, &prompt), None);
        let quote = &text[start..start + COPIED_CHARS];
        assert!(builtin().unusable(quote, &prompt).unwrap().contains("copies the prompt"));
    }

    #[test]
    fn twice_is_not_a_loop() {
        let prompt = Template::builtin().render(DOCUMENT, "x");
        let answer = "Release checks.\nThe handbook's audience section.\nThe handbook's audience section.";
        assert_eq!(builtin().unusable(answer, &prompt), None);
    }

    #[test]
    fn a_custom_templates_own_framing_is_used() {
        let t = Template::custom(
            "[DOC]\n{document}\n[/DOC]\n<passage>{chunk}</passage>\nWrite one line that places the passage in the document.",
            "1",
        );
        let j = Judge::new(&t);
        let prompt = t.render(DOCUMENT, "x");
        assert!(j.unusable("Write one line that places the passage in the document.", &prompt).is_some());
        // `<passage>{chunk}</passage>` is not one tag once the chunk is out: not framing.
        assert_eq!(j.unusable("The <passage> of the handbook on audience.", &prompt), None);
    }
}
