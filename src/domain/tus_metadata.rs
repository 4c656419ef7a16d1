//! tus 1.0.0's `Upload-Metadata` (creation extension): comma-separated pairs of a key and,
//! after one space, its value in Base64; a key may stand alone (an empty value). Keys are
//! unique, non-empty, and hold no spaces or commas.
//!
//! media-node takes one thing from it, the file's extension (DESIGN §1, resumable uploads):
//! the `extension` value, else the extension of `filename`, else the extension of the type
//! `filetype` names (tus-js-client and Uppy send `filename` and `filetype` by default).
//! The values are the client's: they are kept only to be answered back on `HEAD`, as tus
//! asks, never put into a key, a path, a label or a log line.

use base64::Engine;

use crate::domain::{ApiError, FileExtension};

/// The longest `Upload-Metadata` taken, in bytes: generous for a file name and a type.
pub const MAX_METADATA_BYTES: usize = 4096;

/// The pairs of an `Upload-Metadata` header, in the order sent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UploadMetadata {
    pairs: Vec<(String, Vec<u8>)>,
}

impl UploadMetadata {
    /// Parses the header's value; a malformed one is a 400 naming what is wrong.
    pub fn parse(raw: &[u8]) -> Result<Self, ApiError> {
        let invalid = |what: &str| {
            ApiError::InvalidParameter(format!(
                "Upload-Metadata must be comma-separated pairs of a key and a Base64 value: {what}"
            ))
        };
        if raw.len() > MAX_METADATA_BYTES {
            return Err(ApiError::InvalidParameter(format!(
                "Upload-Metadata is longer than {MAX_METADATA_BYTES} bytes"
            )));
        }
        let raw = std::str::from_utf8(raw).map_err(|_| invalid("it is not ASCII"))?;
        let mut pairs: Vec<(String, Vec<u8>)> = Vec::new();
        if raw.trim().is_empty() {
            return Ok(Self { pairs });
        }
        for pair in raw.split(',') {
            let pair = pair.trim_matches(|c| c == ' ' || c == '\t');
            let (key, value) = match pair.split_once(' ') {
                Some((key, value)) => (key, value),
                None => (pair, ""),
            };
            if key.is_empty() || !key.bytes().all(|b| b.is_ascii_graphic() && b != b',') {
                return Err(invalid("a key is empty or not visible ASCII"));
            }
            if value.contains(' ') {
                return Err(invalid("a value holds a space"));
            }
            let value = base64::engine::general_purpose::STANDARD
                .decode(value)
                .map_err(|_| invalid("a value is not Base64"))?;
            if pairs.iter().any(|(seen, _)| seen == key) {
                return Err(invalid("a key is sent twice"));
            }
            pairs.push((key.to_owned(), value));
        }
        Ok(Self { pairs })
    }

    /// The value of `key`, if sent.
    pub fn get(&self, key: &str) -> Option<&[u8]> {
        self.pairs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_slice())
    }

    /// The file's extension: from `extension`, else `filename`, else `filetype`. A value
    /// that is there but gives no valid extension is a 400 naming it; none of the three is
    /// a 400 too (the file's type must be known, as on `POST /v1/media`).
    pub fn extension(&self) -> Result<FileExtension, ApiError> {
        if let Some(value) = self.get("extension") {
            let value = std::str::from_utf8(value).unwrap_or_default();
            return FileExtension::parse(value).map_err(|_| {
                ApiError::InvalidParameter(
                    "Upload-Metadata's extension must be 1-16 letters or digits".to_owned(),
                )
            });
        }
        if let Some(name) = self.get("filename") {
            let name = String::from_utf8_lossy(name);
            let base = name.rsplit(['/', '\\']).next().unwrap_or_default();
            if let Some(extension) = base
                .rsplit_once('.')
                .and_then(|(_, ext)| FileExtension::parse(ext).ok())
            {
                return Ok(extension);
            }
        }
        if let Some(extension) = self
            .get("filetype")
            .and_then(|t| std::str::from_utf8(t).ok())
            .and_then(FileExtension::for_content_type)
        {
            return Ok(extension);
        }
        Err(ApiError::MissingParameter(
            "Upload-Metadata must name the file's type: send `extension` (1-16 letters or \
             digits), or a `filename` with an extension, or a known `filetype`"
                .to_owned(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    fn extension_of(header: &str) -> Result<String, ApiError> {
        UploadMetadata::parse(header.as_bytes())?
            .extension()
            .map(|e| e.as_str().to_owned())
    }

    #[test]
    fn the_extension_comes_from_extension_then_filename_then_filetype() {
        // What tus-js-client and Uppy send for a phone's video.
        let sent = format!(
            "filename {},filetype {}",
            b64("VID_20261207_101500.mp4"),
            b64("video/mp4")
        );
        assert_eq!(extension_of(&sent).unwrap(), "mp4");
        let sent = format!("extension {},filename {}", b64(".OGG"), b64("note.opus"));
        assert_eq!(extension_of(&sent).unwrap(), "ogg");
        // A name without an extension, a known type.
        let sent = format!(
            "filename {},filetype {}",
            b64("scan"),
            b64("application/pdf")
        );
        assert_eq!(extension_of(&sent).unwrap(), "pdf");
        // Parameters of the type do not matter, nor its case.
        let sent = format!("filetype {}", b64("Image/JPEG; q=1"));
        assert_eq!(extension_of(&sent).unwrap(), "jpeg");
        // A path in the name (some clients send one): its last part counts.
        let sent = format!("filename {}", b64("C:\\Users\\me\\report.final.docx"));
        assert_eq!(extension_of(&sent).unwrap(), "docx");
        // Names that are not UTF-8 still give their extension.
        let sent = format!(
            "filename {}",
            base64::engine::general_purpose::STANDARD.encode(b"caf\xe9.txt")
        );
        assert_eq!(extension_of(&sent).unwrap(), "txt");
    }

    #[test]
    fn no_usable_type_is_a_400() {
        for sent in [
            String::new(),
            format!("filename {}", b64("README")),
            format!("filetype {}", b64("application/x-unheard-of")),
            format!("filename {},filetype {}", b64("a.tar."), b64("")),
        ] {
            let err = extension_of(&sent).unwrap_err();
            assert!(
                matches!(err, ApiError::MissingParameter(_)),
                "{sent}: {err:?}"
            );
        }
        // An explicit extension that is not one is named as such.
        let err = extension_of(&format!("extension {}", b64("../etc"))).unwrap_err();
        assert!(matches!(err, ApiError::InvalidParameter(_)), "{err:?}");
    }

    #[test]
    fn the_pairs_follow_the_tus_grammar() {
        let parsed =
            UploadMetadata::parse(format!("is_confidential,name {}", b64("x")).as_bytes()).unwrap();
        assert_eq!(parsed.get("is_confidential"), Some(&b""[..]));
        assert_eq!(parsed.get("name"), Some(&b"x"[..]));
        assert_eq!(parsed.get("absent"), None);
        // Spaces around pairs are tolerated, as clients join them with ", ".
        let parsed =
            UploadMetadata::parse(format!("a {}, b {}", b64("1"), b64("2")).as_bytes()).unwrap();
        assert_eq!(parsed.get("b"), Some(&b"2"[..]));
        for bad in [
            "name !!!".to_owned(),
            format!("name {},name {}", b64("a"), b64("b")),
            format!(",name {}", b64("a")),
            format!("name {} {}", b64("a"), b64("b")),
            "na\u{e9}me YQ==".to_owned(),
            format!("name {}", "A".repeat(MAX_METADATA_BYTES)),
        ] {
            let err = UploadMetadata::parse(bad.as_bytes()).unwrap_err();
            assert!(
                matches!(err, ApiError::InvalidParameter(_)),
                "{bad}: {err:?}"
            );
        }
    }
}
