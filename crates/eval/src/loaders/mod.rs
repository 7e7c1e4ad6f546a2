//! One loader per layout. Each returns a [`Dataset`](crate::Dataset) whose
//! queries all have at least one golden unit; what it leaves out is said in
//! `Dataset::notes`.

pub mod anthropic_docs;
pub mod beir;
pub mod codebase;
pub mod cranfield;
pub mod squad;

use crate::dataset::{char_offset, GivenChunk};

/// Places a set's chunks in a document's text. When every chunk is found in
/// `content`, in order, the text is `content` and the chunks point into it;
/// otherwise the text is the chunks joined by blank lines. The result is
/// aligned with `chunks` (an empty chunk gets an empty range).
pub(crate) fn place_chunks(content: &str, chunks: &[(Option<String>, &str)]) -> (String, Vec<GivenChunk>) {
    let mut placed = Vec::with_capacity(chunks.len());
    let mut cursor = 0;
    for (heading, piece) in chunks {
        let Some(at) = content[cursor..].find(piece).map(|i| cursor + i) else {
            break;
        };
        placed.push(GivenChunk {
            heading: heading.clone(),
            start: char_offset(content, at),
            end: char_offset(content, at + piece.len()),
        });
        cursor = at + piece.len();
    }
    if placed.len() == chunks.len() {
        return (content.to_string(), placed);
    }
    join_chunks(chunks)
}

/// The chunks joined by blank lines, with their character ranges (aligned with `chunks`).
pub(crate) fn join_chunks(chunks: &[(Option<String>, &str)]) -> (String, Vec<GivenChunk>) {
    let mut text = String::new();
    let mut chars = 0;
    let mut placed = Vec::with_capacity(chunks.len());
    for (heading, piece) in chunks {
        if !text.is_empty() && !piece.is_empty() {
            text.push_str("\n\n");
            chars += 2;
        }
        let n = piece.chars().count();
        placed.push(GivenChunk { heading: heading.clone(), start: chars, end: chars + n });
        text.push_str(piece);
        chars += n;
    }
    (text, placed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_found_in_order_point_into_the_content() {
        let content = "héllo world. second part";
        let (text, chunks) =
            place_chunks(content, &[(None, "héllo world."), (Some("h".into()), "second part")]);
        assert_eq!(text, content);
        assert_eq!(chunks[0], GivenChunk { heading: None, start: 0, end: 12 });
        assert_eq!(chunks[1], GivenChunk { heading: Some("h".into()), start: 13, end: 24 });
    }

    #[test]
    fn chunks_not_in_the_content_are_joined() {
        let (text, chunks) = place_chunks("abc", &[(None, "xé"), (None, "yz")]);
        assert_eq!(text, "xé\n\nyz");
        assert_eq!((chunks[0].start, chunks[0].end), (0, 2));
        assert_eq!((chunks[1].start, chunks[1].end), (4, 6));
        let text_chars: Vec<char> = text.chars().collect();
        assert_eq!(text_chars[4..6].iter().collect::<String>(), "yz");
    }
}
