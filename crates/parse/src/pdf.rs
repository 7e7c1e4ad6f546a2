//! PDF, through pdf-extract: one section per page.
//!
//! Bounded: lopdf (under pdf-extract) inflates streams to the end. Before it
//! sees the file, [`check_streams`] decodes every Flate and LZW stream with a
//! cap and refuses the file when they decompress to more than
//! `ingest.max_decompressed_bytes` in total. That check reads the raw file
//! (it cannot see everything lopdf will: streams marked as images, filters it
//! does not decode, a stream decoded once per reference), so PDF is also
//! parsed in a child process under a memory limit and a timeout by default
//! (`crate::worker`, `ingest.parse_isolation`).

use std::cell::Cell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::sync::Once;

use datafactory_core::document::{Document, Format, Section};

use crate::{fallback_title, finish, first_line_title, ParseError, ParseOptions};

pub(crate) fn parse(
    bytes: &[u8],
    path_hint: Option<&Path>,
    opts: &ParseOptions,
) -> Result<Document, ParseError> {
    check_streams(bytes, opts.max_decompressed_bytes)?;
    let encrypted = has_encrypt_dictionary(bytes);
    let pages = match extract_pages(bytes) {
        Ok(pages) => pages,
        Err(_) if encrypted => return Err(ParseError::Encrypted { format: Format::Pdf }),
        Err(e) => return Err(e),
    };
    let pages: Vec<String> = pages.iter().map(|p| tidy_page(p)).collect();
    if pages.iter().all(|p| p.is_empty()) {
        return Err(if encrypted {
            ParseError::Encrypted { format: Format::Pdf }
        } else {
            ParseError::NoText { format: Format::Pdf }
        });
    }

    let mut text = String::new();
    let mut chars = 0usize;
    let mut sections = Vec::new();
    for (i, page) in pages.iter().enumerate() {
        if page.is_empty() {
            continue;
        }
        if !text.is_empty() {
            text.push_str("\n\n");
            chars += 2;
        }
        let start = chars;
        text.push_str(page);
        chars += page.chars().count();
        sections.push(Section {
            heading_path: Vec::new(),
            start,
            end: chars,
            page: Some(u32::try_from(i + 1).unwrap_or(u32::MAX)),
        });
    }
    let title = pages.first().and_then(|p| first_line_title(p)).unwrap_or_else(|| fallback_title(path_hint));
    let mut metadata = serde_json::Map::new();
    metadata.insert("pages".to_string(), pages.len().into());
    finish(Document { title, format: Format::Pdf, text, sections, metadata, external_id: None })
}

thread_local! {
    /// Set while this thread runs pdf-extract: its panics are expected.
    static IN_PDF_EXTRACT: Cell<bool> = const { Cell::new(false) };
}

/// Wraps the process's panic hook (once) so that panics inside pdf-extract,
/// which are caught and reported as corrupt PDFs, do not also print a
/// "thread panicked" message and backtrace. Other panics go to the previous
/// hook as before.
fn install_quiet_panic_hook() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if IN_PDF_EXTRACT.with(Cell::get) {
                tracing::debug!(%info, "pdf-extract panicked");
            } else {
                previous(info);
            }
        }));
    });
}

/// Text of each page. pdf-extract panics on some malformed files: a panic is
/// reported as a corrupt PDF.
fn extract_pages(bytes: &[u8]) -> Result<Vec<String>, ParseError> {
    install_quiet_panic_hook();
    IN_PDF_EXTRACT.with(|f| f.set(true));
    let result = catch_unwind(AssertUnwindSafe(|| text_by_pages(bytes)));
    IN_PDF_EXTRACT.with(|f| f.set(false));
    match result {
        Ok(Ok(pages)) => Ok(pages),
        Ok(Err(ReadError::PageTreeCycle)) => Err(ParseError::Corrupt {
            format: Format::Pdf,
            detail: "a page's /Parent chain loops back on itself".to_string(),
        }),
        Ok(Err(ReadError::Reader(detail))) => {
            if detail.to_ascii_lowercase().contains("decrypt")
                || detail.to_ascii_lowercase().contains("password")
            {
                Err(ParseError::Encrypted { format: Format::Pdf })
            } else {
                Err(ParseError::Corrupt { format: Format::Pdf, detail })
            }
        }
        Err(panic) => {
            let msg = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown error".to_string());
            tracing::debug!(panic = %msg, "pdf-extract panicked");
            Err(ParseError::Corrupt {
                format: Format::Pdf,
                detail: format!("the PDF reader failed on this file ({msg})"),
            })
        }
    }
}

enum ReadError {
    PageTreeCycle,
    Reader(String),
}

/// pdf-extract's `extract_text_from_mem_by_pages`, with the page tree
/// checked first: pdf-extract looks up a page's inherited attributes
/// (`/Resources`, `/MediaBox`) by following `/Parent` until one has them, and
/// a chain that loops back (found by fuzzing) kept it going forever.
fn text_by_pages(bytes: &[u8]) -> Result<Vec<String>, ReadError> {
    let reader = |e: pdf_extract::Error| ReadError::Reader(e.to_string());
    let mut doc = pdf_extract::Document::load_mem(bytes).map_err(reader)?;
    if doc.is_encrypted() {
        doc.decrypt("").map_err(reader)?;
    }
    check_page_tree(&doc)?;
    let mut pages = Vec::new();
    for page in 1.. {
        let mut text = String::new();
        let done =
            pdf_extract::output_doc_page(&doc, &mut pdf_extract::PlainTextOutput::new(&mut text), page);
        if done.is_err() {
            break; // as pdf-extract: the pages up to the first it cannot read
        }
        pages.push(text);
    }
    Ok(pages)
}

/// Fails if any page's `/Parent` chain comes back to an object it passed.
/// Objects already seen to end the chain are not walked again, so the check
/// is linear in the page tree.
fn check_page_tree(doc: &pdf_extract::Document) -> Result<(), ReadError> {
    let mut ends = std::collections::HashSet::new();
    for (_, page) in doc.get_pages() {
        let mut path = Vec::new();
        let mut at = page;
        while !ends.contains(&at) {
            if path.contains(&at) {
                return Err(ReadError::PageTreeCycle);
            }
            path.push(at);
            match doc.get_dictionary(at).and_then(|d| d.get(b"Parent")).and_then(|p| p.as_reference()) {
                Ok(parent) => at = parent,
                Err(_) => break,
            }
        }
        ends.extend(path);
    }
    Ok(())
}

/// Refuses a PDF whose Flate and LZW streams (images aside) decompress to
/// more than `limit` bytes in total, decoding each with a cap.
fn check_streams(bytes: &[u8], limit: u64) -> Result<(), ParseError> {
    let too_large = || ParseError::TooLarge { format: Format::Pdf, limit };
    let mut total = 0u64;
    let mut from = 0usize;
    while let Some(found) = find(&bytes[from..], b"stream") {
        let keyword = from + found;
        from = keyword + b"stream".len();
        if keyword >= 3 && &bytes[keyword - 3..keyword] == b"end" {
            continue;
        }
        // The data starts after the end of line that follows the keyword.
        let data_start = match bytes.get(from..from + 2) {
            Some(b"\r\n") => from + 2,
            Some([b'\n', _]) | Some([b'\r', _]) => from + 1,
            _ => continue,
        };
        // The stream's dictionary: from its object's `obj` keyword.
        let window_start = keyword.saturating_sub(64 * 1024);
        let Some(obj) = rfind(&bytes[window_start..keyword], b"obj") else {
            continue;
        };
        let dict = &bytes[window_start + obj..keyword];
        if find(dict, b"/Image").is_some() {
            continue; // never decoded by the text extractor
        }
        let filters = stream_filters(dict);
        if filters.is_empty() {
            continue;
        }
        let data_end = direct_length(dict)
            .and_then(|n| data_start.checked_add(n))
            .filter(|&end| end <= bytes.len())
            .or_else(|| find(&bytes[data_start..], b"endstream").map(|n| data_start + n))
            .unwrap_or(bytes.len());
        let budget = limit.saturating_sub(total);
        let mut data: Vec<u8> = bytes[data_start..data_end].to_vec();
        let mut decoded_any = false;
        for filter in filters {
            let out = match filter.as_slice() {
                b"FlateDecode" | b"Fl" => inflate(&data, budget),
                b"LZWDecode" | b"LZW" => unlzw(&data, budget),
                _ => break, // not decoded here (nor, mostly, by lopdf)
            };
            let Some(out) = out else {
                return Err(too_large());
            };
            data = out;
            decoded_any = true;
        }
        if decoded_any {
            total += data.len() as u64;
            if total > limit {
                return Err(too_large());
            }
        }
        from = data_end.max(from);
    }
    Ok(())
}

/// The filter names of a stream dictionary, in decoding order.
fn stream_filters(dict: &[u8]) -> Vec<Vec<u8>> {
    let Some(at) = find(dict, b"/Filter") else {
        return Vec::new();
    };
    let rest = &dict[at + b"/Filter".len()..];
    let rest = &rest[rest.iter().take_while(|b| b.is_ascii_whitespace()).count()..];
    let list = if rest.first() == Some(&b'[') {
        &rest[1..rest.iter().position(|&b| b == b']').unwrap_or(rest.len())]
    } else {
        let end = rest.iter().skip(1).position(|&b| b == b'/' || b == b'>' || b.is_ascii_whitespace());
        &rest[..end.map_or(rest.len(), |e| e + 1)]
    };
    list.split(|&b| b == b'/' || b.is_ascii_whitespace())
        .filter(|n| !n.is_empty())
        .map(<[u8]>::to_vec)
        .collect()
}

/// `/Length n` when it is a direct number (not a reference `n 0 R`).
fn direct_length(dict: &[u8]) -> Option<usize> {
    let at = find(dict, b"/Length")?;
    let rest = std::str::from_utf8(&dict[at + b"/Length".len()..]).ok().or_else(|| {
        let tail = &dict[at + b"/Length".len()..];
        std::str::from_utf8(&tail[..tail.iter().position(|b| !b.is_ascii()).unwrap_or(tail.len())]).ok()
    })?;
    let mut words =
        rest.split(|c: char| c.is_ascii_whitespace() || c == '/' || c == '>').filter(|w| !w.is_empty());
    let n: usize = words.next()?.parse().ok()?;
    let second_is_generation = words.next().is_some_and(|w| w.parse::<u32>().is_ok());
    let third_is_r = words.next() == Some("R");
    (!(second_is_generation && third_is_r)).then_some(n)
}

/// Inflates zlib data (raw deflate as lopdf's fallback does), or `None`
/// when it decompresses to more than `budget` bytes. Damaged data gives what
/// could be decoded.
fn inflate(data: &[u8], budget: u64) -> Option<Vec<u8>> {
    use std::io::Read;
    let mut out = Vec::new();
    let mut decoder = flate2::read::ZlibDecoder::new(data).take(budget.saturating_add(1));
    if decoder.read_to_end(&mut out).is_err() && out.is_empty() && data.len() > 2 {
        out.clear();
        let _ = flate2::read::DeflateDecoder::new(&data[2..])
            .take(budget.saturating_add(1))
            .read_to_end(&mut out);
    }
    (out.len() as u64 <= budget).then_some(out)
}

/// Decodes LZW data as lopdf does (early change), or `None` past `budget`.
fn unlzw(data: &[u8], budget: u64) -> Option<Vec<u8>> {
    struct Capped {
        out: Vec<u8>,
        budget: u64,
    }
    impl std::io::Write for Capped {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if self.out.len() as u64 + buf.len() as u64 > self.budget {
                return Err(std::io::Error::other("over budget"));
            }
            self.out.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut capped = Capped { out: Vec::new(), budget };
    let mut decoder = weezl::decode::Decoder::with_tiff_size_switch(weezl::BitOrder::Msb, 8);
    let result = decoder.into_stream(&mut capped).decode_all(data);
    match result.status {
        Err(e) if e.kind() == std::io::ErrorKind::Other && e.to_string() == "over budget" => None,
        _ => Some(capped.out),
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn rfind(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).rposition(|w| w == needle)
}

/// Whether the trailer (or a cross-reference stream) names an `/Encrypt`
/// dictionary. Looks at the first and last MiB, where trailers live.
fn has_encrypt_dictionary(bytes: &[u8]) -> bool {
    const WINDOW: usize = 1024 * 1024;
    let needle = b"/Encrypt";
    let contains = |hay: &[u8]| hay.windows(needle.len()).any(|w| w == needle);
    if bytes.len() <= 2 * WINDOW {
        contains(bytes)
    } else {
        contains(&bytes[..WINDOW]) || contains(&bytes[bytes.len() - WINDOW..])
    }
}

/// Trims line ends, collapses runs of spaces and of blank lines.
fn tidy_page(page: &str) -> String {
    let mut out = String::with_capacity(page.len());
    let mut blank_run = 0usize;
    for line in page.lines() {
        let mut collapsed = String::with_capacity(line.len());
        let mut prev_space = false;
        for ch in line.trim().chars() {
            let ch = if ch == '\t' || ch == '\u{A0}' { ' ' } else { ch };
            if ch == ' ' {
                if !prev_space {
                    collapsed.push(' ');
                }
                prev_space = true;
            } else {
                collapsed.push(ch);
                prev_space = false;
            }
        }
        if collapsed.is_empty() {
            blank_run += 1;
            continue;
        }
        if !out.is_empty() {
            out.push_str(if blank_run > 0 { "\n\n" } else { "\n" });
        }
        blank_run = 0;
        out.push_str(&collapsed);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A PDF of one page whose `/Parent` is `parent` (the page itself or
    /// the page tree) and that has no `/Resources` of its own, so a reader
    /// looks for them up the chain.
    fn one_page_pdf(page_is_own_parent: bool) -> Vec<u8> {
        use pdf_extract::{Dictionary, Document, Object, Stream};
        let mut doc = Document::with_version("1.4");
        let (pages_id, page_id, content_id) = (doc.new_object_id(), doc.new_object_id(), doc.new_object_id());
        let content = b"BT /F1 12 Tf 72 700 Td (Hello from one page) Tj ET".to_vec();
        doc.objects.insert(content_id, Object::Stream(Stream::new(Dictionary::new(), content)));
        let mut page = Dictionary::new();
        page.set("Type", Object::Name(b"Page".to_vec()));
        page.set("Parent", Object::Reference(if page_is_own_parent { page_id } else { pages_id }));
        page.set("MediaBox", Object::Array([0, 0, 612, 792].map(Object::Integer).to_vec()));
        page.set("Contents", Object::Reference(content_id));
        doc.objects.insert(page_id, Object::Dictionary(page));
        let mut font = Dictionary::new();
        font.set("Type", Object::Name(b"Font".to_vec()));
        font.set("Subtype", Object::Name(b"Type1".to_vec()));
        font.set("BaseFont", Object::Name(b"Helvetica".to_vec()));
        let mut fonts = Dictionary::new();
        fonts.set("F1", Object::Dictionary(font));
        let mut resources = Dictionary::new();
        resources.set("Font", Object::Dictionary(fonts));
        let mut pages = Dictionary::new();
        pages.set("Type", Object::Name(b"Pages".to_vec()));
        pages.set("Kids", Object::Array(vec![Object::Reference(page_id)]));
        pages.set("Count", Object::Integer(1));
        pages.set("Resources", Object::Dictionary(resources));
        doc.objects.insert(pages_id, Object::Dictionary(pages));
        let catalog_id = doc.new_object_id();
        let mut catalog = Dictionary::new();
        catalog.set("Type", Object::Name(b"Catalog".to_vec()));
        catalog.set("Pages", Object::Reference(pages_id));
        doc.objects.insert(catalog_id, Object::Dictionary(catalog));
        doc.trailer.set("Root", Object::Reference(catalog_id));
        let mut bytes = Vec::new();
        doc.save_to(&mut bytes).unwrap();
        bytes
    }

    /// A page that is its own parent (found by fuzzing: pdf-extract followed
    /// the chain for ever) is a corrupt PDF, said at once; the same page
    /// under its page tree reads as before.
    #[test]
    fn a_page_tree_that_loops_is_corrupt_not_a_hang() {
        let opts = ParseOptions::default();
        let good = parse(&one_page_pdf(false), None, &opts).unwrap();
        assert!(good.text.contains("Hello from one page"), "{:?}", good.text);
        // On its own thread, so that a regression fails here (a hang guard,
        // not a speed check) instead of hanging the test run.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(parse(&one_page_pdf(true), None, &opts));
        });
        match rx.recv_timeout(std::time::Duration::from_secs(120)).expect("the looping PDF still hangs") {
            Err(ParseError::Corrupt { detail, .. }) => assert!(detail.contains("/Parent"), "{detail}"),
            other => panic!("expected a corrupt PDF, got {other:?}"),
        }
    }

    #[test]
    fn tidy_collapses_spaces_and_blank_lines() {
        assert_eq!(
            tidy_page("\n\n  Title   here  \n\n\n\n\nBody  text\nmore\t\ttext \n\n"),
            "Title here\n\nBody text\nmore text"
        );
    }

    #[test]
    fn garbage_after_header_is_corrupt_not_a_panic() {
        let err = parse(b"%PDF-1.7\n1 0 obj << /Type /Catalog", None, &ParseOptions::default()).unwrap_err();
        assert!(matches!(err, ParseError::Corrupt { .. }), "{err:?}");
    }

    #[test]
    fn encrypt_marker() {
        assert!(has_encrypt_dictionary(b"trailer << /Root 1 0 R /Encrypt 5 0 R >>"));
        assert!(!has_encrypt_dictionary(b"trailer << /Root 1 0 R >>"));
    }

    fn zlib(data: &[u8]) -> Vec<u8> {
        use std::io::Write;
        let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn pdf_with_stream(filter: &str, data: &[u8]) -> Vec<u8> {
        let mut pdf = b"%PDF-1.7\n4 0 obj\n<< /Length ".to_vec();
        pdf.extend_from_slice(format!("{} /Filter {filter} >>\nstream\n", data.len()).as_bytes());
        pdf.extend_from_slice(data);
        pdf.extend_from_slice(b"\nendstream\nendobj\n");
        pdf
    }

    #[test]
    fn flate_bombs_are_refused_before_lopdf() {
        let once = zlib(&vec![b' '; 8 * 1024 * 1024]);
        let twice = zlib(&once);
        for (filter, data) in [("/FlateDecode", &once), ("[/FlateDecode /FlateDecode]", &twice)] {
            let pdf = pdf_with_stream(filter, data);
            let err = check_streams(&pdf, 1024 * 1024).unwrap_err();
            assert!(matches!(err, ParseError::TooLarge { format: Format::Pdf, limit: 1048576 }), "{err:?}");
            assert_eq!(
                err.to_string(),
                "PDF decompresses to more than 1048576 bytes (limit ingest.max_decompressed_bytes)"
            );
            check_streams(&pdf, 16 * 1024 * 1024).unwrap();
        }
    }

    #[test]
    fn lzw_bombs_are_refused() {
        let mut encoded = Vec::new();
        weezl::encode::Encoder::with_tiff_size_switch(weezl::BitOrder::Msb, 8)
            .into_stream(&mut encoded)
            .encode_all(&vec![0u8; 4 * 1024 * 1024][..])
            .status
            .unwrap();
        let pdf = pdf_with_stream("/LZWDecode", &encoded);
        assert!(matches!(check_streams(&pdf, 1024 * 1024), Err(ParseError::TooLarge { .. })));
        check_streams(&pdf, 8 * 1024 * 1024).unwrap();
    }

    #[test]
    fn stream_dictionary_bits() {
        assert_eq!(
            stream_filters(b"<< /Filter [/FlateDecode /LZWDecode] >>"),
            vec![b"FlateDecode".to_vec(), b"LZWDecode".to_vec()]
        );
        assert_eq!(stream_filters(b"<< /Filter/FlateDecode/Length 5 >>"), vec![b"FlateDecode".to_vec()]);
        assert_eq!(direct_length(b"<< /Length 42 /Filter /Fl >>"), Some(42));
        assert_eq!(direct_length(b"<< /Length 7 0 R >>"), None);
    }
}
