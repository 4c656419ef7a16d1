//! Validated values from the edge of the API. Each has one constructor that checks it, so
//! code past the handlers never re-checks ids, extensions or accounts.

use std::fmt;

use uuid::Uuid;

/// A media id: a random UUID, always printed lower-case and hyphenated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MediaId(Uuid);

impl MediaId {
    pub fn new_random() -> Self {
        Self(Uuid::new_v4())
    }

    /// Accepts the hyphenated form only, in either case. `None` for anything else, which the
    /// API answers with 404 like an unknown id.
    pub fn parse(raw: &str) -> Option<Self> {
        if raw.len() != 36 {
            return None;
        }
        Uuid::try_parse(raw).ok().map(Self)
    }

    pub fn as_uuid(&self) -> Uuid {
        self.0
    }
}

impl From<Uuid> for MediaId {
    fn from(value: Uuid) -> Self {
        Self(value)
    }
}

impl fmt::Display for MediaId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0.hyphenated(), f)
    }
}

/// The account that owns uploads: the token's `sub`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AccountId(String);

impl AccountId {
    pub const MAX_LEN: usize = 255;

    pub fn parse(raw: &str) -> Option<Self> {
        let ok =
            !raw.is_empty() && raw.len() <= Self::MAX_LEN && raw.chars().all(|c| !c.is_control());
        ok.then(|| Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for AccountId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A file extension from `X-Gr-File-Extension`: 1-16 ASCII letters or digits, lower-case,
/// after removing one leading dot. It only ever names a content type and a download file
/// name; it never reaches a path or an object key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FileExtension(String);

impl FileExtension {
    pub const MAX_LEN: usize = 16;

    pub fn parse(raw: &str) -> Result<Self, &'static str> {
        let trimmed = raw.strip_prefix('.').unwrap_or(raw);
        if trimmed.is_empty() || trimmed.len() > Self::MAX_LEN {
            return Err("X-Gr-File-Extension must be 1-16 letters or digits");
        }
        if !trimmed.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err("X-Gr-File-Extension must be 1-16 letters or digits");
        }
        Ok(Self(trimmed.to_ascii_lowercase()))
    }

    /// For values read back from the database, which were validated on the way in.
    pub fn from_stored(value: String) -> Self {
        Self(value)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The content type served for this extension; unknown ones are opaque bytes.
    pub fn content_type(&self) -> &'static str {
        content_type_for(&self.0)
    }

    /// The usual extension of a content type of the well-known table (`image/jpeg` is
    /// `jpeg`), its parameters and case aside; `None` for any other type, the generic
    /// `application/octet-stream` among them.
    pub fn for_content_type(content_type: &str) -> Option<Self> {
        let essence = content_type
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase();
        PREFERRED_EXTENSIONS
            .iter()
            .find(|ext| content_type_for(ext) == essence)
            .map(|ext| Self((*ext).to_owned()))
    }
}

/// One extension for each type of `content_type_for`, the one a type names back.
const PREFERRED_EXTENSIONS: &[&str] = &[
    "jpeg", "png", "gif", "webp", "heic", "heif", "avif", "bmp", "tiff", "mp4", "3gp", "mov",
    "webm", "mkv", "avi", "ogg", "mp3", "m4a", "aac", "amr", "wav", "flac", "pdf", "txt", "csv",
    "rtf", "json", "zip", "doc", "docx", "xls", "xlsx", "ppt", "pptx", "odt", "ods", "odp", "vcf",
];

impl fmt::Display for FileExtension {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An upload's `Idempotency-Key` (IETF httpapi draft): 1-255 visible ASCII characters
/// (0x21-0x7E). The draft's Structured Field string form is accepted too: one pair of
/// surrounding double quotes is removed, and the key is what they enclosed. A value that
/// begins with a double quote is that form or invalid (a lone `"`, an unclosed `"abc`):
/// the OpenAPI document's pattern. Keys are the client's to choose; never a metric label,
/// and logged (at most) shortened.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    pub const MAX_LEN: usize = 255;
    const INVALID: &'static str = "Idempotency-Key must be 1-255 visible ASCII characters \
        (0x21-0x7E), optionally in double quotes; one that begins with a double quote must \
        end with one";

    /// The key of one header value, as its bytes arrived.
    pub fn parse(raw: &[u8]) -> Result<Self, &'static str> {
        let key = match raw {
            // The quoted form; a slice pattern with both quotes would need two bytes, and a
            // lone `"` or an unclosed one would pass as an unquoted key.
            [b'"', rest @ ..] => match rest {
                [inner @ .., b'"'] => inner,
                _ => return Err(Self::INVALID),
            },
            other => other,
        };
        let visible = key.iter().all(|b| (0x21..=0x7e).contains(b));
        if key.is_empty() || key.len() > Self::MAX_LEN || !visible {
            return Err(Self::INVALID);
        }
        // Visible ASCII is UTF-8.
        Ok(Self(String::from_utf8_lossy(key).into_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The first characters, for a log line.
    pub fn shortened(&self) -> &str {
        &self.0[..self.0.len().min(12)]
    }
}

impl fmt::Debug for IdempotencyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "IdempotencyKey({:?}…, {} chars)",
            self.shortened(),
            self.0.len()
        )
    }
}

/// Well-known types for the media a messenger carries. The client's `Content-Type` is never
/// trusted; this table is the only source.
fn content_type_for(ext: &str) -> &'static str {
    match ext {
        // images
        "jpg" | "jpeg" | "jpe" => "image/jpeg",
        "png" => "image/png",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "heic" => "image/heic",
        "heif" => "image/heif",
        "avif" => "image/avif",
        "bmp" => "image/bmp",
        "tif" | "tiff" => "image/tiff",
        // video
        "mp4" | "m4v" => "video/mp4",
        "3gp" | "3gpp" => "video/3gpp",
        "mov" => "video/quicktime",
        "webm" => "video/webm",
        "mkv" => "video/x-matroska",
        "avi" => "video/x-msvideo",
        // audio and voice notes
        "ogg" | "oga" | "opus" => "audio/ogg",
        "mp3" => "audio/mpeg",
        "m4a" => "audio/mp4",
        "aac" => "audio/aac",
        "amr" => "audio/amr",
        "wav" => "audio/wav",
        "flac" => "audio/flac",
        // documents
        "pdf" => "application/pdf",
        "txt" => "text/plain",
        "csv" => "text/csv",
        "rtf" => "application/rtf",
        "json" => "application/json",
        "zip" => "application/zip",
        "doc" => "application/msword",
        "docx" => "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
        "xls" => "application/vnd.ms-excel",
        "xlsx" => "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
        "ppt" => "application/vnd.ms-powerpoint",
        "pptx" => "application/vnd.openxmlformats-officedocument.presentationml.presentation",
        "odt" => "application/vnd.oasis.opendocument.text",
        "ods" => "application/vnd.oasis.opendocument.spreadsheet",
        "odp" => "application/vnd.oasis.opendocument.presentation",
        "vcf" => "text/vcard",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_known_type_names_an_extension_that_serves_it_back() {
        for ext in PREFERRED_EXTENSIONS {
            let served = content_type_for(ext);
            assert_ne!(served, "application/octet-stream", "{ext}");
            let back = FileExtension::for_content_type(served).unwrap();
            assert_eq!(back.content_type(), served, "{ext}");
        }
        assert_eq!(
            FileExtension::for_content_type("video/3gpp")
                .unwrap()
                .as_str(),
            "3gp"
        );
        assert!(FileExtension::for_content_type("application/octet-stream").is_none());
        assert!(FileExtension::for_content_type("").is_none());
    }

    #[test]
    fn extension_rules() {
        assert_eq!(FileExtension::parse("jpeg").unwrap().as_str(), "jpeg");
        assert_eq!(FileExtension::parse("JPEG").unwrap().as_str(), "jpeg");
        assert_eq!(FileExtension::parse(".png").unwrap().as_str(), "png");
        assert_eq!(FileExtension::parse("mp3").unwrap().as_str(), "mp3");
        assert_eq!(
            FileExtension::parse("abcdefghij123456").unwrap().as_str(),
            "abcdefghij123456"
        );
        for bad in [
            "",
            ".",
            "..png",
            "abcdefghij1234567",
            "../etc",
            "a/b",
            "a\\b",
            "tar.gz",
            "jp eg",
            "jpé",
            "%2e",
            "a\0",
            "png.",
        ] {
            assert!(FileExtension::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn content_types() {
        let ct = |e: &str| FileExtension::parse(e).unwrap().content_type();
        assert_eq!(ct("JPG"), "image/jpeg");
        assert_eq!(ct("ogg"), "audio/ogg");
        assert_eq!(ct("pdf"), "application/pdf");
        assert_eq!(ct("xyz"), "application/octet-stream");
    }

    #[test]
    fn media_ids() {
        let id = MediaId::parse("F32BB4F9-850B-43C6-9B91-279831914C95").unwrap();
        assert_eq!(id.to_string(), "f32bb4f9-850b-43c6-9b91-279831914c95");
        assert!(MediaId::parse("f32bb4f9850b43c69b91279831914c95").is_none());
        assert!(MediaId::parse("{f32bb4f9-850b-43c6-9b91-279831914c95}").is_none());
        assert!(MediaId::parse("not-a-uuid").is_none());
        assert!(MediaId::parse("").is_none());
    }

    #[test]
    fn idempotency_keys() {
        let key = |raw: &[u8]| IdempotencyKey::parse(raw).map(|k| k.as_str().to_owned());
        assert_eq!(key(b"abc-123").unwrap(), "abc-123");
        assert_eq!(key(b"\"abc\"").unwrap(), "abc");
        assert_eq!(key(b"\"\"abc\"\"").unwrap(), "\"abc\"");
        assert_eq!(key(b"!~").unwrap(), "!~");
        let longest = "k".repeat(255);
        assert_eq!(key(longest.as_bytes()).unwrap(), longest);
        assert_eq!(key(format!("\"{longest}\"").as_bytes()).unwrap(), longest);
        // A key that ends in a quote is fine; one that begins with one is the quoted form,
        // whole or not at all (the pattern of the OpenAPI document).
        assert_eq!(key(b"abc\"").unwrap(), "abc\"");
        assert_eq!(key(b"a\"b").unwrap(), "a\"b");
        for bad in [
            &b""[..],
            b"\"",
            b"\"abcq",
            b"\"abc\"x",
            b"\"\"",
            b"a b",
            b"a\tb",
            b"a\x7f",
            b"a\x01",
            "clé".as_bytes(),
            "k".repeat(256).as_bytes(),
        ] {
            assert!(IdempotencyKey::parse(bad).is_err(), "{bad:?} accepted");
        }
        // Every short value over quotes, visible and invisible bytes is taken exactly when
        // it matches the OpenAPI pattern ^([!#-~][!-~]{0,254}|"[!-~]{1,255}")$.
        let visible = |b: &u8| (0x21..=0x7e).contains(b);
        let documented = |raw: &[u8]| match raw {
            [b'"', inner @ .., b'"'] if !inner.is_empty() => inner.iter().all(visible),
            [first, ..] => *first != b'"' && raw.iter().all(visible),
            [] => false,
        };
        let alphabet = [b'"', b'a', b'~', b' '];
        let mut values: Vec<Vec<u8>> = vec![Vec::new()];
        for _ in 0..5 {
            let longer: Vec<Vec<u8>> = values
                .iter()
                .filter(|v| v.len() == values.last().unwrap().len())
                .flat_map(|v| {
                    alphabet.iter().map(move |c| {
                        let mut next = v.clone();
                        next.push(*c);
                        next
                    })
                })
                .collect();
            values.extend(longer);
        }
        for raw in &values {
            assert_eq!(
                IdempotencyKey::parse(raw).is_ok(),
                documented(raw),
                "{:?}",
                String::from_utf8_lossy(raw)
            );
        }
        let debug = format!(
            "{:?}",
            IdempotencyKey::parse("k".repeat(200).as_bytes()).unwrap()
        );
        assert!(debug.len() < 60, "{debug}");
    }

    #[test]
    fn accounts() {
        assert!(AccountId::parse("demo").is_some());
        assert!(AccountId::parse("").is_none());
        assert!(AccountId::parse("a\nb").is_none());
        assert!(AccountId::parse(&"x".repeat(256)).is_none());
    }
}
