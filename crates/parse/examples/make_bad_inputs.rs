//! Writes the bad-input corpus (tests/bad-input/, see its README): small
//! malformed and hostile files of every format. Deterministic (a fixed seed,
//! fixed ZIP timestamps); its output is committed, so run it only when the
//! corpus changes:
//!
//! ```sh
//! cargo run -p datafactory-parse --example make_bad_inputs -- tests/bad-input
//! ```
//!
//! Files that would be large but are trivial to make (a 50 MB line, 100 000
//! nested elements) are made by the tests themselves instead.

use std::io::Write;
use std::path::{Path, PathBuf};

fn main() {
    let out = PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| "tests/bad-input".into()));
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures");
    std::fs::create_dir_all(&out).unwrap();
    let write = |name: &str, bytes: &[u8]| {
        std::fs::write(out.join(name), bytes).unwrap();
        println!("{name:32} {:>8} bytes", bytes.len());
    };
    let fixture = |name: &str| std::fs::read(fixtures.join(name)).unwrap();
    let mut rng = Rng(20261206);

    // ---- Text and encodings -------------------------------------------------
    write("empty.txt", b"");
    write("whitespace.txt", b"  \n\t\n   \r\n  ");
    write("bom-only.txt", b"\xEF\xBB\xBF");
    write("crlf-only.txt", &b"\r\n".repeat(1000));
    write("nul-only.txt", &[0u8; 4096]);
    write("nul-in-text.txt", b"A normal looking line\nwith a NUL \0 in the middle\nand more text.\n");
    write("random.txt", &rng.bytes(4096));
    write("control-chars.txt", &(0..4096).map(|i| (i % 8 + 1) as u8).collect::<Vec<_>>());
    write(
        "invalid-utf8.txt",
        b"Stray bytes \xFF\xFE in a line.\nA cut sequence \xE2\x82 here.\nA continuation \x80 alone.\n",
    );
    write(
        "overlong-utf8.txt",
        b"Overlong slash \xC0\xAF and overlong NUL \xC0\x80 and a surrogate \xED\xA0\x80.\n",
    );
    write(
        "mixed-encodings.md",
        b"# Mixed\n\nUTF-8: caf\xC3\xA9.\n\nLatin-1: caf\xE9.\n\nWindows-1252: \x93quoted\x94 \x97 dash.\n",
    );
    write("utf8-bom.md", b"\xEF\xBB\xBF# Title after a BOM\n\nThe body mentions a quokka.\n");
    let utf16 = |big: bool, bom: bool, s: &str| {
        let mut v = Vec::new();
        if bom {
            v.extend_from_slice(if big { b"\xFE\xFF" } else { b"\xFF\xFE" });
        }
        for u in s.encode_utf16() {
            v.extend_from_slice(&if big { u.to_be_bytes() } else { u.to_le_bytes() });
        }
        v
    };
    write("utf16le-bom.txt", &utf16(false, true, "UTF-16 little endian text about a numbat.\n"));
    write("utf16be-bom.txt", &utf16(true, true, "UTF-16 big endian text about a wombat.\n"));
    write("utf16le-no-bom.txt", &utf16(false, false, "UTF-16 without a byte order mark.\n"));
    let mut odd = utf16(false, true, "Odd number of bytes.\n");
    odd.push(b'x');
    write("utf16-odd-length.txt", &odd);
    let mut lone = utf16(false, true, "A lone surrogate: ");
    lone.extend_from_slice(&0xD800u16.to_le_bytes());
    lone.extend_from_slice(&utf16(false, false, " then text.\n"));
    write("utf16-lone-surrogate.txt", &lone);
    write("utf32le-bom.txt", b"\xFF\xFE\x00\x00T\x00\x00\x00e\x00\x00\x00x\x00\x00\x00t\x00\x00\x00");
    write("zero-width-only.md", "\u{200B}\u{200C}\u{200D}\u{FEFF}\u{2060}".repeat(50).as_bytes());

    // ---- HTML ----------------------------------------------------------------
    write(
        "nav-only.html",
        b"<html><body><nav><a href=/>Home</a> <a href=/about>About</a></nav></body></html>",
    );
    write("script-only.html", b"<html><head><script>var a = '<p>not text</p>';</script></head><body><script>x()</script></body></html>");
    write(
        "unclosed-tags.html",
        b"<html><body><p>First <b>bold <i>italic<p>Second paragraph<li>item<li>another<table><tr><td>cell",
    );
    write("deep-divs-1k.html", format!("{}deep{}", "<div>".repeat(1000), "</div>".repeat(1000)).as_bytes());
    write("deep-inline-2k.html", format!("<p>{}deep", "<b><i>".repeat(1000)).as_bytes());
    write("misnested-span-div.html", format!("{}deep", "<span><div></span>".repeat(1000)).as_bytes());
    write(
        "broken-entities.html",
        b"<p>Entities &#xFFFFFFFF; &#0; &#55296; &amp &notanentity; &#x110000; survive as text about a kakapo.</p>",
    );
    write(
        "latin1.html",
        b"<html><head><meta charset=iso-8859-1><title>Caf\xE9</title></head><body><p>Cr\xE8me br\xFBl\xE9e and a takahe.</p></body></html>",
    );
    write("unterminated-comment.html", b"<html><body><!-- this comment never ends <p>hidden</p>");

    // ---- Markdown -----------------------------------------------------------
    write("deep-blockquote.md", format!("{} deep\n", ">".repeat(2000)).as_bytes());
    write("deep-list.md", format!("{}item\n", "- ".repeat(2000)).as_bytes());
    write("front-matter-only.md", b"---\ntitle: Only front matter\n---\n\n");
    write(
        "unterminated-fence.md",
        b"# Code\n\n```rust\nfn main() {\n    // the fence never closes, about a pademelon\n",
    );

    // ---- JSONL ---------------------------------------------------------------
    write(
        "broken-lines.jsonl",
        b"{\"id\": \"ok-1\", \"text\": \"A good record about a bilby.\"}\n{\"id\": \"cut\", \"text\": \"never fin\n{\"text\": 5}\nnot json at all\n\n{\"id\": [1], \"text\": \"x\"}\n",
    );
    write("all-bad.jsonl", b"nope\n{}\n[]\n\"string\"\n42\n");
    write(
        "deep-json.jsonl",
        format!("{{\"text\": \"x\", \"meta\": {}{}}}\n", "[".repeat(10_000), "]".repeat(10_000)).as_bytes(),
    );
    write(
        "deep-markdown-record.jsonl",
        format!("{{\"format\": \"markdown\", \"text\": \"{} deep\"}}\n", ">".repeat(2000)).as_bytes(),
    );
    write("huge-number.jsonl", b"{\"id\": 1e400, \"text\": \"number out of range\"}\n");
    write("invalid-utf8.jsonl", b"{\"id\": \"l1\", \"text\": \"caf\xE9 latin-1 inside JSON\"}\n");

    // ---- PDF -------------------------------------------------------------------
    let sample_pdf = fixture("sample.pdf");
    write("header-only.pdf", b"%PDF-1.7\n");
    write("truncated-half.pdf", &sample_pdf[..sample_pdf.len() / 2]);
    write("truncated-no-trailer.pdf", &sample_pdf[..sample_pdf.len() - 300]);
    let mut garbage = b"%PDF-1.7\n".to_vec();
    garbage.extend_from_slice(&rng.bytes(4096));
    write("garbage-body.pdf", &garbage);
    write("encrypted.pdf", &fixture("bad/encrypted.pdf"));
    write("no-text.pdf", &pdf_with_content(b"", ""));
    write("corrupt-flate.pdf", &pdf_with_content(&rng.bytes(512), "/Filter /FlateDecode"));
    // A 4 GiB page content stream, Flate-compressed twice: a few KiB on disk.
    let layer1 = zlib_of_zeros(4 << 30);
    write("flate-bomb.pdf", &pdf_with_content(&zlib(&layer1), "/Filter [/FlateDecode /FlateDecode]"));
    // 1 GiB through LZW (then Flate, to keep the file small).
    let mut lzw = Vec::new();
    let zeros = vec![0u8; 1 << 20];
    {
        let mut encoder = weezl::encode::Encoder::with_tiff_size_switch(weezl::BitOrder::Msb, 8);
        let mut stream = encoder.into_stream(&mut lzw);
        for _ in 0..1023 {
            stream.encode(&zeros[..]).status.unwrap();
        }
        stream.encode_all(&zeros[..]).status.unwrap();
    }
    write("lzw-bomb.pdf", &pdf_with_content(&zlib(&lzw), "/Filter [/FlateDecode /LZWDecode]"));
    write("objstm-bomb.pdf", &objstm_bomb(&zlib(&layer1)));
    write(
        "deep-array.pdf",
        &pdf_with_extra_object(format!("{}{}", "[".repeat(30_000), "]".repeat(30_000)).as_bytes()),
    );
    write("deep-dict.pdf", &pdf_with_extra_object("<< /A ".repeat(10_000).as_bytes()));
    write("pages-cycle.pdf", &pages_cycle());
    write("xref-prev-loop.pdf", &xref_prev_loop());
    write(
        "pdf-named.docx",
        &pdf_with_content(b"BT /F1 12 Tf 72 720 Td (A PDF named docx about a dugong) Tj ET", ""),
    );

    // ---- DOCX and ZIP ------------------------------------------------------------
    let sample_docx = fixture("sample.docx");
    write("truncated.docx", &sample_docx[..sample_docx.len() / 2]);
    write("docx-named.pdf", &sample_docx);
    write("empty-zip.docx", &zip(&[]));
    write("zip-without-document.docx", &zip(&[("readme.txt", b"not a word document".to_vec())]));
    write(
        "invalid-xml.docx",
        &zip(&[("word/document.xml", b"<w:document><w:body><w:p><w:r><w:t>cut".to_vec())]),
    );
    let deep_xml = format!(
        "<w:document xmlns:w=\"http://schemas.openxmlformats.org/wordprocessingml/2006/main\"><w:body>{}<w:p><w:r><w:t>deep</w:t></w:r></w:p>{}</w:body></w:document>",
        "<w:sdt><w:sdtContent>".repeat(50_000),
        "</w:sdtContent></w:sdt>".repeat(50_000)
    );
    write("deep-xml.docx", &zip(&[("word/document.xml", deep_xml.into_bytes())]));
    write("lying-size-bomb.docx", &lying_size_zip("word/document.xml", 64 << 20));
    let mut ole = vec![0xD0, 0xCF, 0x11, 0xE0, 0xA1, 0xB1, 0x1A, 0xE1];
    ole.resize(4096, 0);
    write("ole-encrypted.docx", &ole);
}

/// xorshift: a fixed seed gives the same bytes on every run.
struct Rng(u64);

impl Rng {
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n)
            .map(|_| {
                self.0 ^= self.0 << 13;
                self.0 ^= self.0 >> 7;
                self.0 ^= self.0 << 17;
                (self.0 >> 24) as u8
            })
            .collect()
    }
}

fn zlib(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn zlib_of_zeros(n: u64) -> Vec<u8> {
    let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
    let chunk = vec![0u8; 1 << 20];
    for _ in 0..n / chunk.len() as u64 {
        e.write_all(&chunk).unwrap();
    }
    e.finish().unwrap()
}

/// A PDF from numbered objects (1-based, in order), with a correct xref table.
fn pdf(objects: &[Vec<u8>], root: usize) -> Vec<u8> {
    let mut out = b"%PDF-1.7\n%\xE2\xE3\xCF\xD3\n".to_vec();
    let mut offsets = Vec::new();
    for (i, body) in objects.iter().enumerate() {
        offsets.push(out.len());
        out.extend_from_slice(format!("{} 0 obj\n", i + 1).as_bytes());
        out.extend_from_slice(body);
        out.extend_from_slice(b"\nendobj\n");
    }
    let xref = out.len();
    out.extend_from_slice(format!("xref\n0 {}\n0000000000 65535 f \n", objects.len() + 1).as_bytes());
    for o in offsets {
        out.extend_from_slice(format!("{o:010} 00000 n \n").as_bytes());
    }
    out.extend_from_slice(
        format!("trailer\n<< /Size {} /Root {root} 0 R >>\nstartxref\n{xref}\n%%EOF\n", objects.len() + 1)
            .as_bytes(),
    );
    out
}

fn stream(dict_extra: &str, data: &[u8]) -> Vec<u8> {
    let mut v = format!("<< /Length {} {dict_extra} >>\nstream\n", data.len()).into_bytes();
    v.extend_from_slice(data);
    v.extend_from_slice(b"\nendstream");
    v
}

fn page_objects(content: Vec<u8>) -> Vec<Vec<u8>> {
    vec![
        b"<< /Type /Catalog /Pages 2 0 R >>".to_vec(),
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>".to_vec(),
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R /Resources << /Font << /F1 5 0 R >> >> >>".to_vec(),
        content,
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>".to_vec(),
    ]
}

/// One page whose content stream is `data` with `filter` in its dictionary.
fn pdf_with_content(data: &[u8], filter: &str) -> Vec<u8> {
    pdf(&page_objects(stream(filter, data)), 1)
}

/// A one-page PDF with text and an extra object (unreferenced) of `body`.
fn pdf_with_extra_object(body: &[u8]) -> Vec<u8> {
    let mut objects = page_objects(stream("", b"BT /F1 12 Tf 72 720 Td (Some text) Tj ET"));
    objects.push(body.to_vec());
    pdf(&objects, 1)
}

/// The Pages node lists itself as its own kid.
fn pages_cycle() -> Vec<u8> {
    let mut objects = page_objects(stream("", b"BT /F1 12 Tf 72 720 Td (Cycle) Tj ET"));
    objects[1] = b"<< /Type /Pages /Kids [2 0 R 3 0 R] /Count 2 >>".to_vec();
    pdf(&objects, 1)
}

/// The trailer's /Prev points back at its own cross-reference table.
fn xref_prev_loop() -> Vec<u8> {
    let good = pdf_with_content(b"BT /F1 12 Tf 72 720 Td (Loop) Tj ET", "");
    let text = String::from_utf8_lossy(&good).into_owned();
    let startxref: usize =
        text.rsplit("startxref\n").next().unwrap().lines().next().unwrap().parse().unwrap();
    text.replace(" /Root 1 0 R >>", &format!(" /Root 1 0 R /Prev {startxref} >>")).into_bytes()
}

/// A PDF 1.5 file whose objects live in an object stream that inflates to
/// GiBs (lopdf inflates object streams while loading).
fn objstm_bomb(compressed: &[u8]) -> Vec<u8> {
    let objects = vec![
        b"<< /Type /Catalog /Pages 2 0 R >>".to_vec(),
        b"<< /Type /Pages /Kids [] /Count 0 >>".to_vec(),
        stream("/Type /ObjStm /N 1 /First 4 /Filter [/FlateDecode /FlateDecode]", compressed),
    ];
    pdf(&objects, 1)
}

/// A ZIP archive (deflated entries, fixed timestamps).
fn zip(entries: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let mut buf = std::io::Cursor::new(Vec::new());
    {
        let mut z = zip::ZipWriter::new(&mut buf);
        let options = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated)
            .last_modified_time(zip::DateTime::default());
        for (name, data) in entries {
            z.start_file(*name, options).unwrap();
            z.write_all(data).unwrap();
        }
        z.finish().unwrap();
    }
    buf.into_inner()
}

/// A ZIP whose one entry declares 100 bytes but inflates to `real` bytes.
fn lying_size_zip(name: &str, real: usize) -> Vec<u8> {
    let mut data = b"<w:document><w:body><w:p><w:r><w:t>".to_vec();
    data.resize(real, b' ');
    let good = zip(&[(name, data)]);
    // Patch the uncompressed size (local header offset 22, central header
    // offset 24) to 100.
    let mut bytes = good;
    let local = 0usize;
    bytes[local + 22..local + 26].copy_from_slice(&100u32.to_le_bytes());
    let central = bytes.windows(4).rposition(|w| w == b"PK\x01\x02").unwrap();
    bytes[central + 24..central + 28].copy_from_slice(&100u32.to_le_bytes());
    bytes
}
