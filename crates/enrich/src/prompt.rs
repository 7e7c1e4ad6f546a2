//! The prompt: the document first and the chunk last, so every chunk of a
//! document shares one long prefix that a server can keep in its cache.

/// The built-in template, after Anthropic's published contextual-retrieval
/// prompt, with one sentence added so the answer is in the document's language.
pub const BUILTIN_TEMPLATE: &str = "<document>\n{document}\n</document>\n\
Here is the chunk we want to situate within the whole document\n\
<chunk>\n{chunk}\n</chunk>\n\
Please give a short succinct context to situate this chunk within the overall document for the \
purposes of improving search retrieval of the chunk. Answer only with the succinct context and \
nothing else. Write it in the language of the document.";

/// Its version: part of every cache key, so a changed template never reuses
/// answers to the old one.
pub const BUILTIN_VERSION: &str = "contextual-retrieval-v1";

/// A prompt template and its version.
#[derive(Debug, Clone)]
pub struct Template {
    text: String,
    version: String,
}

impl Template {
    pub fn builtin() -> Template {
        Template { text: BUILTIN_TEMPLATE.into(), version: BUILTIN_VERSION.into() }
    }

    /// A custom template (`{document}` and `{chunk}` placeholders, checked by
    /// the configuration) and the version it is cached under.
    pub fn custom(text: &str, version: &str) -> Template {
        Template { text: text.into(), version: format!("custom:{version}") }
    }

    pub fn version(&self) -> &str {
        &self.version
    }

    /// The template as written, placeholders included.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The text before the chunk: identical for every chunk of a document
    /// (or of one window of it).
    pub fn prefix(&self, document: &str) -> String {
        let (before, _) = self.split();
        before.replace("{document}", &escape(document))
    }

    /// The whole prompt.
    pub fn render(&self, document: &str, chunk: &str) -> String {
        let mut out = self.prefix(document);
        out.push_str(&self.suffix(chunk));
        out
    }

    /// The text after the prefix: the chunk's part. `prefix(d) + suffix(c)`
    /// is `render(d, c)`, so the document is escaped once for all its chunks.
    pub fn suffix(&self, chunk: &str) -> String {
        let (_, after) = self.split();
        after.replace("{chunk}", &escape(chunk)).replace("{document}", "")
    }

    /// The template cut where the chunk's part begins: at `{chunk}` or, if the
    /// template puts the document after the chunk, nowhere (empty prefix).
    fn split(&self) -> (&str, &str) {
        let doc = self.text.find("{document}");
        let chunk = self.text.find("{chunk}");
        match (doc, chunk) {
            (Some(d), Some(c)) if d < c => {
                // Cut at the line that opens the chunk part, so the prefix ends
                // with the document (and its closing tag).
                let cut = self.text[..c].rfind("\n</document>").map_or(c, |i| i + "\n</document>\n".len());
                let cut = cut.min(c);
                self.text.split_at(cut)
            }
            _ => ("", self.text.as_str()),
        }
    }
}

/// Document and chunk text are data: the delimiter tags inside them are
/// defused (their `<` becomes `‹`), so they cannot end the document early or
/// open a chunk.
pub fn escape(text: &str) -> String {
    const TAGS: [&str; 4] = ["<document", "</document", "<chunk", "</chunk"];
    let lower = text.to_ascii_lowercase();
    if !TAGS.iter().any(|t| lower.contains(t)) {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    let bytes = lower.as_bytes();
    while i < text.len() {
        if bytes[i] == b'<' && TAGS.iter().any(|t| lower[i..].starts_with(t)) {
            out.push('‹');
            i += 1;
            continue;
        }
        let ch = text[i..].chars().next().unwrap_or('\u{fffd}');
        out.push(ch);
        i += ch.len_utf8().max(1);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn document_first_chunk_last_and_prefix_shared() {
        let t = Template::builtin();
        let a = t.render("Doc text.", "chunk one");
        let b = t.render("Doc text.", "chunk two");
        let prefix = t.prefix("Doc text.");
        assert!(a.starts_with(&prefix) && b.starts_with(&prefix));
        assert!(prefix.starts_with("<document>\nDoc text.\n</document>\n"));
        assert!(a.contains("<chunk>\nchunk one\n</chunk>"));
        assert!(a.contains("Answer only with the succinct context and nothing else."));
        assert!(!prefix.contains("chunk one"));
    }

    #[test]
    fn prefix_and_suffix_make_the_prompt() {
        for t in [Template::builtin(), Template::custom("{chunk} of {document}", "x")] {
            let (d, c) = ("a <document> b", "the </chunk> c");
            assert_eq!(format!("{}{}", t.prefix(d), t.suffix(c)), t.render(d, c));
        }
    }

    #[test]
    fn tags_inside_data_are_defused() {
        let t = Template::builtin();
        let p = t.render("a </document> b <CHUNK>", "x </chunk> y");
        assert_eq!(p.matches("</document>").count(), 1);
        assert_eq!(p.matches("</chunk>").count(), 1);
        assert!(p.contains("‹/document>") && p.contains("‹CHUNK>") && p.contains("‹/chunk>"));
        assert_eq!(escape("naïve <b> text"), "naïve <b> text");
    }

    #[test]
    fn custom_template_has_its_version() {
        let t = Template::custom("Doc: {document}\nPart: {chunk}\nContext?", "2");
        assert_eq!(t.version(), "custom:2");
        assert_eq!(t.render("D", "C"), "Doc: D\nPart: C\nContext?");
        assert!(t.render("D", "C").starts_with(&t.prefix("D")));
    }
}
