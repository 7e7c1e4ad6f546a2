//! Structure-aware, token-budgeted chunking.
//!
//! A chunk never spans two sections: sections come from the document's own
//! structure (headings, pages), and a heading change is the strongest boundary
//! there is. Inside a section the text is cut into *atoms* (sentences, or lines
//! where the text has no sentence punctuation); each gap between atoms has a
//! strength — paragraph > sentence > line > word > character — and a chunk
//! that must end is cut at the strongest gap that still leaves it at least half
//! full. An atom larger than the budget is cut into words, and a word larger
//! than the budget into characters, so no chunk is ever over budget.
//!
//! Every chunk is a contiguous slice of `Document::text`: its offsets map back
//! exactly, which lets a reader quote and highlight it. The same document and
//! configuration always give the same chunks.
//!
//! A [`ChunkPlan`] (chosen per document by the analyzer) can change the size
//! and overlap, cut by lines instead of sentences (code, data, chats), and
//! keep code blocks and tables in one piece when they fit the budget.

use datafactory_core::config::ChunkingConfig;
use datafactory_core::plan::{blocks, BlockKind};
use datafactory_core::{Chunk, ChunkPlan, ChunkStrategy, Document, TokenCounter};
use std::sync::Arc;
use unicode_segmentation::UnicodeSegmentation;

/// Increase when the chunker's output for the same input changes.
pub const CHUNKER_VERSION: &str = "1";

/// Strength of the gap *before* an atom.
const PARAGRAPH: u8 = 4;
const SENTENCE: u8 = 3;
const LINE: u8 = 2;
const WORD: u8 = 1;
const CHARACTER: u8 = 0;

/// Cuts documents into chunks of at most `max_tokens` tokens.
#[derive(Clone)]
pub struct Chunker {
    max_tokens: usize,
    overlap_tokens: usize,
    strategy: ChunkStrategy,
    keep_tables_whole: bool,
    keep_code_whole: bool,
    counter: Arc<dyn TokenCounter>,
}

/// An indivisible piece of a section's text (byte range into the document).
#[derive(Debug, Clone, Copy)]
struct Atom {
    start: usize,
    end: usize,
    tokens: usize,
    strength: u8,
}

impl Chunker {
    pub fn new(config: &ChunkingConfig, counter: Arc<dyn TokenCounter>) -> Chunker {
        Chunker {
            max_tokens: config.max_tokens.max(1),
            overlap_tokens: config.overlap_tokens.min(config.max_tokens / 2),
            strategy: ChunkStrategy::Sections,
            keep_tables_whole: false,
            keep_code_whole: false,
            counter,
        }
    }

    /// This chunker following `plan`, its size capped at `cap` tokens (what
    /// the embedding model takes).
    pub fn with_plan(&self, plan: &ChunkPlan, cap: usize) -> Chunker {
        let max_tokens = plan.max_tokens.min(cap).max(1);
        Chunker {
            max_tokens,
            overlap_tokens: plan.overlap_tokens.min(max_tokens / 2),
            strategy: plan.strategy,
            keep_tables_whole: plan.keep_tables_whole,
            keep_code_whole: plan.keep_code_whole,
            counter: self.counter.clone(),
        }
    }

    /// Identifies everything that decides the chunks: a document ingested under
    /// another fingerprint is chunked again even if its bytes are unchanged.
    pub fn fingerprint(&self) -> String {
        let mut f = format!(
            "chunker-v{CHUNKER_VERSION};max_tokens={};overlap_tokens={};counter={}",
            self.max_tokens,
            self.overlap_tokens,
            self.counter.name()
        );
        // Unchanged for the default chunker, so stores made before plans keep their fingerprint.
        if self.strategy != ChunkStrategy::Sections || self.keep_tables_whole || self.keep_code_whole {
            f.push_str(&format!(
                ";strategy={};keep_tables={};keep_code={}",
                self.strategy.as_str(),
                self.keep_tables_whole,
                self.keep_code_whole
            ));
        }
        f
    }

    pub fn max_tokens(&self) -> usize {
        self.max_tokens
    }

    /// Cuts a document into chunks, in document order.
    pub fn chunk(&self, doc: &Document) -> Vec<Chunk> {
        let text = doc.text.as_str();
        let mut positions = CharCursor::new(text);
        let mut chunks = Vec::new();
        for section in &doc.sections {
            let start = positions.byte_of(section.start);
            let end = positions.byte_of(section.end).max(start);
            let atoms = self.atoms(text, start, end);
            for (first, last) in self.pack(text, &atoms) {
                let (byte_start, byte_end) = (atoms[first].start, atoms[last].end);
                let piece = &text[byte_start..byte_end];
                chunks.push(Chunk {
                    ordinal: chunks.len() as u32,
                    heading_path: section.heading_path.clone(),
                    text: piece.to_string(),
                    start: positions.char_of(byte_start),
                    end: positions.char_of(byte_end),
                    page: section.page,
                    token_count: self.counter.count(piece) as u32,
                    context: None,
                });
            }
        }
        chunks
    }

    /// Splits `text[start..end]` into atoms no larger than the budget: code
    /// blocks and tables the plan keeps whole (and that fit) become one atom,
    /// the rest is cut by the plan's strategy.
    fn atoms(&self, text: &str, start: usize, end: usize) -> Vec<Atom> {
        let mut atoms = Vec::new();
        let mut pos = start;
        if self.keep_tables_whole || self.keep_code_whole {
            for block in blocks(&text[start..end]) {
                let keep = match block.kind {
                    BlockKind::Table => self.keep_tables_whole,
                    BlockKind::Code => self.keep_code_whole,
                };
                let (a, b) = trim_range(text, start + block.start, start + block.end);
                if !keep || a == b {
                    continue;
                }
                let tokens = self.counter.count(&text[a..b]);
                if tokens > self.max_tokens {
                    continue; // too big to keep whole: cut like the text around it
                }
                self.free_atoms(text, pos, a, &mut atoms);
                atoms.push(Atom { start: a, end: b, tokens, strength: PARAGRAPH });
                pos = b;
            }
        }
        self.free_atoms(text, pos, end, &mut atoms);
        atoms
    }

    /// Atoms of text outside kept blocks, by the plan's strategy.
    fn free_atoms(&self, text: &str, start: usize, end: usize, atoms: &mut Vec<Atom>) {
        if start >= end {
            return;
        }
        match self.strategy {
            ChunkStrategy::Sections => self.sentence_atoms(text, start, end, atoms),
            ChunkStrategy::Lines => self.line_atoms(text, start, end, atoms),
        }
    }

    /// One atom per line; a blank line before it makes the gap a paragraph gap.
    fn line_atoms(&self, text: &str, start: usize, end: usize, atoms: &mut Vec<Atom>) {
        let mut pos = start;
        let mut strength = PARAGRAPH;
        for line in text[start..end].split_inclusive('\n') {
            let (a, b) = trim_range(text, pos, pos + line.len());
            pos += line.len();
            if a == b {
                strength = PARAGRAPH;
                continue;
            }
            self.push_atom(text, a, b, strength, atoms);
            strength = LINE;
        }
    }

    /// Paragraphs cut into sentences (or lines, where a line ends without
    /// sentence punctuation).
    fn sentence_atoms(&self, text: &str, start: usize, end: usize, atoms: &mut Vec<Atom>) {
        for (p_start, p_end) in paragraphs(text, start, end) {
            let paragraph = &text[p_start..p_end];
            let mut strength = PARAGRAPH;
            for (offset, piece) in paragraph.split_sentence_bound_indices() {
                let (a, b) = trim_range(text, p_start + offset, p_start + offset + piece.len());
                if a == b {
                    continue;
                }
                self.push_atom(text, a, b, strength, atoms);
                // The gap after this piece: a sentence end, or only a line break.
                let body = text[a..b].trim_end_matches(['"', '\'', ')', ']', '»', '”', '’']);
                strength = if ends_sentence(body) || !piece.ends_with('\n') { SENTENCE } else { LINE };
            }
        }
    }

    fn push_atom(&self, text: &str, start: usize, end: usize, strength: u8, atoms: &mut Vec<Atom>) {
        let tokens = self.counter.count(&text[start..end]);
        if tokens <= self.max_tokens {
            atoms.push(Atom { start, end, tokens, strength });
            return;
        }
        // Too big: cut into words, and words into characters.
        let mut first = true;
        for (offset, word) in text[start..end].split_word_bound_indices() {
            if word.trim().is_empty() {
                continue;
            }
            let (a, b) = (start + offset, start + offset + word.len());
            let s = if first { strength } else { WORD };
            first = false;
            let tokens = self.counter.count(word);
            if tokens <= self.max_tokens {
                atoms.push(Atom { start: a, end: b, tokens, strength: s });
            } else {
                self.push_characters(text, a, b, s, atoms);
            }
        }
    }

    /// Cuts one over-long word into the longest prefixes that fit the budget.
    fn push_characters(&self, text: &str, mut start: usize, end: usize, strength: u8, atoms: &mut Vec<Atom>) {
        let mut s = strength;
        while start < end {
            let boundaries: Vec<usize> = text[start..end]
                .char_indices()
                .map(|(i, _)| start + i)
                .skip(1)
                .chain(std::iter::once(end))
                .collect();
            // Largest boundary whose prefix fits (binary search; counts grow with length).
            let (mut lo, mut hi) = (0usize, boundaries.len() - 1);
            while lo < hi {
                let mid = (lo + hi).div_ceil(2);
                if self.counter.count(&text[start..boundaries[mid]]) <= self.max_tokens {
                    lo = mid;
                } else {
                    hi = mid - 1;
                }
            }
            let cut = boundaries[lo];
            atoms.push(Atom { start, end: cut, tokens: self.counter.count(&text[start..cut]), strength: s });
            s = CHARACTER;
            start = cut;
        }
    }

    /// Groups atoms into chunks: returns (first, last) atom indices, inclusive.
    fn pack(&self, text: &str, atoms: &[Atom]) -> Vec<(usize, usize)> {
        let max = self.max_tokens;
        let mut out = Vec::new();
        let mut i = 0;
        while i < atoms.len() {
            // Greedy: as many atoms as fit.
            let mut total = 0;
            let mut j = i;
            while j < atoms.len() && total + atoms[j].tokens <= max {
                total += atoms[j].tokens;
                j += 1;
            }
            if j < atoms.len() {
                j = self.best_cut(atoms, i, j);
            }
            // The counter need not be exactly additive: verify the whole.
            while j > i + 1 && self.counter.count(&text[atoms[i].start..atoms[j - 1].end]) > max {
                j -= 1;
            }
            out.push((i, j - 1));
            if j >= atoms.len() {
                break;
            }
            i = self.overlap_start(atoms, i, j);
        }
        out
    }

    /// Where to end a chunk that starts at atom `i` and could hold atoms up to
    /// `j` (exclusive): at the strongest gap, among those that leave the chunk
    /// at least half full; the latest such gap on ties.
    fn best_cut(&self, atoms: &[Atom], i: usize, j: usize) -> usize {
        let half = self.max_tokens / 2;
        let mut best = j;
        let mut best_strength = atoms.get(j).map_or(PARAGRAPH, |a| a.strength);
        let mut prefix: usize = atoms[i..j].iter().map(|a| a.tokens).sum();
        // Candidate cut before atom e, for e from j down to i+1.
        for e in (i + 1..j).rev() {
            prefix -= atoms[e].tokens;
            if prefix < half {
                break;
            }
            if atoms[e].strength > best_strength {
                best = e;
                best_strength = atoms[e].strength;
            }
        }
        best
    }

    /// The first atom of the next chunk: the previous chunk ended before atom
    /// `j`; repeat up to `overlap_tokens` of its last atoms, as long as the next
    /// chunk can still hold atom `j`.
    fn overlap_start(&self, atoms: &[Atom], i: usize, j: usize) -> usize {
        if self.overlap_tokens == 0 {
            return j;
        }
        let mut k = j;
        let mut overlap = 0;
        while k > i + 1 && overlap + atoms[k - 1].tokens <= self.overlap_tokens {
            overlap += atoms[k - 1].tokens;
            k -= 1;
        }
        while k < j && overlap + atoms[j].tokens > self.max_tokens {
            overlap -= atoms[k].tokens;
            k += 1;
        }
        k
    }
}

fn ends_sentence(s: &str) -> bool {
    s.ends_with(['.', '!', '?', ':', ';', '。', '！', '？', '…'])
}

/// Byte ranges of the paragraphs of `text[start..end]`: runs of lines separated
/// by lines that are empty or white space only; trimmed.
fn paragraphs(text: &str, start: usize, end: usize) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut current: Option<(usize, usize)> = None;
    let mut pos = start;
    for line in text[start..end].split_inclusive('\n') {
        let line_start = pos;
        pos += line.len();
        if line.trim().is_empty() {
            if let Some(p) = current.take() {
                out.push(p);
            }
        } else {
            current = Some(match current {
                Some((s, _)) => (s, pos),
                None => (line_start, pos),
            });
        }
    }
    out.extend(current);
    out.into_iter().map(|(a, b)| trim_range(text, a, b)).filter(|(a, b)| a < b).collect()
}

/// `start..end` without leading and trailing white space.
fn trim_range(text: &str, start: usize, end: usize) -> (usize, usize) {
    let s = &text[start..end];
    let lead = s.len() - s.trim_start().len();
    let trail = s.len() - s.trim_end().len();
    if lead == s.len() {
        return (start, start);
    }
    (start + lead, end - trail)
}

/// Converts between character and byte offsets by walking from the last
/// position asked, so converting positions in (nearly) ascending order costs
/// one pass over the text.
struct CharCursor<'a> {
    text: &'a str,
    byte: usize,
    chars: usize,
}

impl<'a> CharCursor<'a> {
    fn new(text: &'a str) -> Self {
        CharCursor { text, byte: 0, chars: 0 }
    }

    /// Byte offset of the `target`-th character (clamped to the end).
    fn byte_of(&mut self, target: usize) -> usize {
        while self.chars < target && self.byte < self.text.len() {
            self.step_forward();
        }
        while self.chars > target {
            self.step_back();
        }
        self.byte
    }

    /// Character offset of a byte offset that lies on a character boundary.
    fn char_of(&mut self, target: usize) -> usize {
        while self.byte < target {
            self.step_forward();
        }
        while self.byte > target {
            self.step_back();
        }
        self.chars
    }

    fn step_forward(&mut self) {
        let c = self.text[self.byte..].chars().next().map_or(1, char::len_utf8);
        self.byte += c;
        self.chars += 1;
    }

    fn step_back(&mut self) {
        let c = self.text[..self.byte].chars().next_back().map_or(1, char::len_utf8);
        self.byte -= c;
        self.chars -= 1;
    }
}

#[cfg(test)]
mod tests;
