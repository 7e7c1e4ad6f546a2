//! How a document is to be cut: the chunking plan the analyzer chooses for a
//! document and the chunker follows, and the blocks (code, tables) a plan may
//! ask to keep whole.
//!
//! The plan lives here, not in the analyzer's crate, so that the chunker can
//! follow it without knowing how it was chosen.

use serde::{Deserialize, Serialize};

/// How the chunker splits a section into pieces before packing them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ChunkStrategy {
    /// Paragraphs, then sentences, then lines, then words: for prose.
    Sections,
    /// Lines, with blank lines as the strongest cut: for source code, data
    /// and conversations, where sentence punctuation means nothing.
    Lines,
}

impl ChunkStrategy {
    pub fn as_str(self) -> &'static str {
        match self {
            ChunkStrategy::Sections => "sections",
            ChunkStrategy::Lines => "lines",
        }
    }
}

/// A chunking plan: the strategy, the size and overlap in tokens, and which
/// blocks to keep in one chunk when they fit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChunkPlan {
    pub strategy: ChunkStrategy,
    pub max_tokens: usize,
    pub overlap_tokens: usize,
    pub keep_tables_whole: bool,
    pub keep_code_whole: bool,
}

impl ChunkPlan {
    /// Brings the numbers into the range the chunker accepts: at least 16
    /// tokens, an overlap of at most half.
    pub fn normalized(mut self) -> ChunkPlan {
        self.max_tokens = self.max_tokens.clamp(16, 8192);
        self.overlap_tokens = self.overlap_tokens.min(self.max_tokens / 2);
        self
    }

    /// A short stable text for fingerprints and logs.
    pub fn describe(&self) -> String {
        format!(
            "{}:{}/{}{}{}",
            self.strategy.as_str(),
            self.max_tokens,
            self.overlap_tokens,
            if self.keep_tables_whole { ":tables" } else { "" },
            if self.keep_code_whole { ":code" } else { "" }
        )
    }
}

/// Changes to a plan asked for by a request (ingest field or CLI flag); what
/// is absent keeps the analyzer's choice.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PlanOverride {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strategy: Option<ChunkStrategy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overlap_tokens: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_tables_whole: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_code_whole: Option<bool>,
}

impl PlanOverride {
    pub fn is_empty(&self) -> bool {
        *self == PlanOverride::default()
    }

    pub fn apply(&self, plan: &ChunkPlan) -> ChunkPlan {
        ChunkPlan {
            strategy: self.strategy.unwrap_or(plan.strategy),
            max_tokens: self.max_tokens.unwrap_or(plan.max_tokens),
            overlap_tokens: self.overlap_tokens.unwrap_or(plan.overlap_tokens),
            keep_tables_whole: self.keep_tables_whole.unwrap_or(plan.keep_tables_whole),
            keep_code_whole: self.keep_code_whole.unwrap_or(plan.keep_code_whole),
        }
        .normalized()
    }

    /// Reads `key=value` pairs separated by commas, e.g.
    /// `strategy=lines,max_tokens=256,overlap_tokens=0,keep_code_whole=true`.
    pub fn parse(spec: &str) -> Result<PlanOverride, String> {
        let mut o = PlanOverride::default();
        for pair in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (key, value) = pair
                .split_once('=')
                .ok_or_else(|| format!("expected key=value in the plan, got {pair:?}"))?;
            let (key, value) = (key.trim(), value.trim());
            let number =
                || value.parse::<usize>().map_err(|_| format!("{key} must be a number, is {value:?}"));
            let flag =
                || value.parse::<bool>().map_err(|_| format!("{key} must be true or false, is {value:?}"));
            match key {
                "strategy" => {
                    o.strategy = Some(match value {
                        "sections" => ChunkStrategy::Sections,
                        "lines" => ChunkStrategy::Lines,
                        _ => return Err(format!("strategy must be sections or lines, is {value:?}")),
                    })
                }
                "max_tokens" => o.max_tokens = Some(number()?),
                "overlap_tokens" => o.overlap_tokens = Some(number()?),
                "keep_tables_whole" => o.keep_tables_whole = Some(flag()?),
                "keep_code_whole" => o.keep_code_whole = Some(flag()?),
                _ => {
                    return Err(format!(
                        "unknown plan key {key:?}; use strategy, max_tokens, overlap_tokens, \
                         keep_tables_whole, keep_code_whole"
                    ))
                }
            }
        }
        if o.max_tokens.is_some_and(|m| m < 16) {
            return Err("max_tokens must be at least 16".into());
        }
        Ok(o)
    }
}

/// What a block of lines is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BlockKind {
    /// A fenced code block, or a run of lines that read as code.
    Code,
    /// A run of table rows (`a | b`, as the parsers write tables, or Markdown).
    Table,
}

/// A block of whole lines: byte offsets into the text it was found in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Block {
    pub kind: BlockKind,
    pub start: usize,
    pub end: usize,
    /// Whether a code block was fenced (``` or ~~~) rather than recognised by its lines.
    pub fenced: bool,
}

/// Code blocks and tables in `text`, in order, not overlapping. A block
/// starts at the beginning of a line and ends after its last line's newline
/// (or at the end of the text). Fenced code blocks (``` or ~~~) run to their
/// closing fence; unfenced code is a run of at least three lines that read as
/// code (blank lines inside allowed); a table is a run of at least two lines
/// with a `|` between cells.
pub fn blocks(text: &str) -> Vec<Block> {
    let lines: Vec<(usize, &str)> = {
        let mut pos = 0;
        text.split_inclusive('\n')
            .map(|l| {
                let start = pos;
                pos += l.len();
                (start, l)
            })
            .collect()
    };
    let end_of = |i: usize| lines.get(i).map_or(text.len(), |(s, _)| *s);
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i].1;
        if let Some(fence) = fence_of(line) {
            let mut j = i + 1;
            while j < lines.len() && !closes(lines[j].1, fence) {
                j += 1;
            }
            let last = (j + 1).min(lines.len());
            out.push(Block { kind: BlockKind::Code, start: lines[i].0, end: end_of(last), fenced: true });
            i = last;
            continue;
        }
        if is_table_row(line) {
            let mut j = i + 1;
            while j < lines.len() && is_table_row(lines[j].1) {
                j += 1;
            }
            if j - i >= 2 {
                out.push(Block { kind: BlockKind::Table, start: lines[i].0, end: end_of(j), fenced: false });
                i = j;
                continue;
            }
        }
        if looks_like_code(line) {
            // Extend over code lines and blank lines followed by code.
            let mut j = i + 1;
            let mut last_code = i;
            let mut code_lines = 1;
            while j < lines.len() {
                let l = lines[j].1;
                if fence_of(l).is_some() {
                    break;
                }
                if looks_like_code(l) || (is_indented(l) && code_lines > 0) {
                    last_code = j;
                    code_lines += 1;
                } else if !l.trim().is_empty() {
                    break;
                }
                j += 1;
            }
            if code_lines >= 3 {
                out.push(Block {
                    kind: BlockKind::Code,
                    start: lines[i].0,
                    end: end_of(last_code + 1),
                    fenced: false,
                });
                i = last_code + 1;
                continue;
            }
        }
        i += 1;
    }
    out
}

/// The fence a line opens with (``` or ~~~, up to three spaces of indent).
fn fence_of(line: &str) -> Option<&'static str> {
    let t = line.trim_start_matches(' ');
    if line.len() - t.len() > 3 {
        return None;
    }
    if t.starts_with("```") {
        Some("```")
    } else if t.starts_with("~~~") {
        Some("~~~")
    } else {
        None
    }
}

fn closes(line: &str, fence: &str) -> bool {
    let t = line.trim();
    t.starts_with(fence) && t.trim_start_matches(fence.chars().next().unwrap_or('`')).is_empty()
}

/// A table row: at least one `|` with text on both sides, or a Markdown row.
pub fn is_table_row(line: &str) -> bool {
    let t = line.trim();
    if t.len() < 3 || !t.contains('|') {
        return false;
    }
    if t.starts_with('|') && t.ends_with('|') {
        return true;
    }
    // `a | b` as the HTML and DOCX parsers write table rows; `||` and shell pipes
    // (`ls | grep`) are also caught, which only matters for runs of two or more.
    t.contains(" | ") && !t.contains("||")
}

fn is_indented(line: &str) -> bool {
    (line.starts_with("    ") || line.starts_with('\t')) && !line.trim().is_empty()
}

/// Whether a line reads as program text rather than prose.
pub fn looks_like_code(line: &str) -> bool {
    let t = line.trim();
    if t.is_empty() || t.len() > 400 {
        return false;
    }
    const STARTS: &[&str] = &[
        "fn ",
        "pub ",
        "let ",
        "use ",
        "impl ",
        "struct ",
        "enum ",
        "mod ",
        "match ",
        "#[",
        "def ",
        "class ",
        "import ",
        "from ",
        "return ",
        "return;",
        "#include",
        "#define",
        "const ",
        "var ",
        "function ",
        "package ",
        "func ",
        "public ",
        "private ",
        "static ",
        "if (",
        "for (",
        "while (",
        "} else",
        "//",
        "/*",
        "*/",
        "@",
        "SELECT ",
        "#!/",
    ];
    if STARTS.iter().any(|s| t.starts_with(s)) {
        // "use" and "from" also begin English sentences: require code punctuation then.
        if t.starts_with("use ") || t.starts_with("from ") || t.starts_with("import ") {
            return t.ends_with(';') || t.contains("::") || (t.contains(" import ") && !t.ends_with('.'));
        }
        if t.starts_with("//") || t.starts_with("/*") || t.starts_with('@') {
            return !t.starts_with("// ") || t.len() < 200;
        }
        return true;
    }
    // Indented continuation of code: arguments, fields, closing brackets.
    if (line.starts_with("    ") || line.starts_with('\t')) && (t.ends_with(',') || t.ends_with('(')) {
        return !t.contains(". ");
    }
    const SQL: &[&str] = &["CREATE ", "INSERT ", "UPDATE ", "DELETE ", "ALTER ", "DROP ", "PRAGMA "];
    if SQL.iter().any(|s| t.starts_with(s)) {
        return true;
    }
    if t.ends_with('{')
        || t.ends_with(';')
        || t == "}"
        || t == "};"
        || t == ")"
        || t == "});"
        || t.ends_with("=>")
    {
        return true;
    }
    t.starts_with('}') && t.len() <= 3
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_fenced_code_tables_and_unfenced_code() {
        let text = "Intro line.\n\n```rust\nfn main() {\n\n}\n```\nAfter.\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\nname | value\nx | 1\n\nfn a() {\n    let x = 1;\n}\nEnd.";
        let b = blocks(text);
        let kinds: Vec<_> = b.iter().map(|b| (b.kind, b.fenced)).collect();
        assert_eq!(
            kinds,
            vec![
                (BlockKind::Code, true),
                (BlockKind::Table, false),
                (BlockKind::Table, false),
                (BlockKind::Code, false)
            ]
        );
        assert_eq!(&text[b[0].start..b[0].end], "```rust\nfn main() {\n\n}\n```\n");
        assert_eq!(&text[b[3].start..b[3].end], "fn a() {\n    let x = 1;\n}\n");
        assert!(!looks_like_code("Use the force, Luke."));
        assert!(!looks_like_code("From here on, we walk."));
    }

    #[test]
    fn overrides_parse_and_apply() {
        let o = PlanOverride::parse("strategy=lines, max_tokens=200,keep_code_whole=false").unwrap();
        let plan = ChunkPlan {
            strategy: ChunkStrategy::Sections,
            max_tokens: 512,
            overlap_tokens: 150,
            keep_tables_whole: true,
            keep_code_whole: true,
        };
        let p = o.apply(&plan);
        assert_eq!(p.strategy, ChunkStrategy::Lines);
        assert_eq!((p.max_tokens, p.overlap_tokens), (200, 100));
        assert!(p.keep_tables_whole && !p.keep_code_whole);
        assert!(PlanOverride::parse("size=3").unwrap_err().contains("unknown plan key"));
        assert!(PlanOverride::parse("max_tokens=8").is_err());
    }
}
