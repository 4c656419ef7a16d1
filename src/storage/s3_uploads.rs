//! The two S3 calls object_store does not offer. ListMultipartUploads is needed only where
//! nothing else can find an upload: a crash between creating a multipart upload and saving
//! its id in the row (the row then says "being created"), and the tests' checks that
//! nothing was left behind. CompleteMultipartUpload with the parts' own numbers: object_store
//! numbers the parts it completes 1, 2, 3…, while a resumable upload's are numbered by the
//! request that wrote them (so that no two requests ever write the same number), with gaps.
//! Requests go through object_store's own HTTP client and SigV4
//! signer, with the store's credentials; the answer is read with an XML parser.

use anyhow::Context;
use object_store::aws::{AmazonS3, AmazonS3ConfigKey, AwsAuthorizer};
use object_store::client::{HttpClient, HttpConnector, HttpRequest, HttpRequestBody};
use serde::Deserialize;

use crate::settings::StorageSettings;

/// An unfinished multipart upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingUpload {
    pub key: String,
    pub upload_id: String,
}

#[derive(Debug)]
pub(super) struct UploadLister {
    client: HttpClient,
    credentials: object_store::aws::AwsCredentialProvider,
    /// `https://host[:port]/bucket` (path-style) or the virtual-hosted bucket URL.
    bucket_url: url::Url,
    region: String,
}

/// The parts of a ListMultipartUploads answer that are used.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ListMultipartUploadsResult {
    #[serde(default)]
    upload: Vec<Upload>,
    #[serde(default)]
    is_truncated: bool,
    next_key_marker: Option<String>,
    next_upload_id_marker: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Upload {
    key: String,
    upload_id: String,
}

impl UploadLister {
    pub(super) fn new(
        s3: &AmazonS3,
        bucket: &str,
        settings: &StorageSettings,
        options: &object_store::ClientOptions,
    ) -> anyhow::Result<Self> {
        let from_env = object_store::aws::AmazonS3Builder::from_env();
        let endpoint = settings
            .s3
            .endpoint
            .clone()
            .or_else(|| from_env.get_config_value(&AmazonS3ConfigKey::Endpoint));
        let region = settings
            .s3
            .region
            .clone()
            .or_else(|| from_env.get_config_value(&AmazonS3ConfigKey::Region))
            .unwrap_or_else(|| "us-east-1".to_owned());
        let base = match endpoint {
            Some(endpoint) => format!("{}/{bucket}", endpoint.trim_end_matches('/')),
            None => format!("https://s3.{region}.amazonaws.com/{bucket}"),
        };
        Ok(Self {
            client: object_store::client::ReqwestConnector::default().connect(options)?,
            credentials: s3.credentials().clone(),
            bucket_url: url::Url::parse(&base).context("S3 endpoint URL")?,
            region,
        })
    }

    /// Unfinished multipart uploads whose key starts with `prefix`.
    pub(super) async fn list(&self, prefix: &str) -> anyhow::Result<Vec<PendingUpload>> {
        let mut found = Vec::new();
        let mut markers: Option<(String, String)> = None;
        loop {
            let mut url = self.bucket_url.clone();
            {
                let mut query = url.query_pairs_mut();
                query.append_pair("uploads", "");
                query.append_pair("prefix", prefix);
                if let Some((key, upload)) = &markers {
                    query.append_pair("key-marker", key);
                    query.append_pair("upload-id-marker", upload);
                }
            }
            let page = parse_listing(&self.get(url).await?)?;
            found.extend(page.upload.into_iter().map(|u| PendingUpload {
                key: u.key,
                upload_id: u.upload_id,
            }));
            let next = page.next_key_marker.zip(page.next_upload_id_marker);
            match (page.is_truncated, next) {
                (true, Some(next)) if markers.as_ref() != Some(&next) => markers = Some(next),
                _ => return Ok(found),
            }
        }
    }

    /// Completes the multipart upload `upload_id` of `key` from `parts` (number, ETag), in
    /// the order given.
    pub(super) async fn complete(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[(u32, String)],
    ) -> anyhow::Result<()> {
        let mut url = self.bucket_url.clone();
        url.path_segments_mut()
            .map_err(|()| anyhow::anyhow!("the S3 endpoint URL cannot take a key"))?
            .extend(key.split('/'));
        url.query_pairs_mut().append_pair("uploadId", upload_id);
        let body = completion_document(parts);
        let answer = self.send("POST", url, body.into_bytes()).await?;
        // S3 may answer 200 and report the failure in the body.
        anyhow::ensure!(
            !answer.contains("<Error>"),
            "S3 refused to complete the upload: {}",
            answer.chars().take(300).collect::<String>()
        );
        Ok(())
    }

    async fn get(&self, url: url::Url) -> anyhow::Result<String> {
        self.send("GET", url, Vec::new()).await
    }

    async fn send(&self, method: &str, url: url::Url, body: Vec<u8>) -> anyhow::Result<String> {
        let credential = self.credentials.get_credential().await?;
        let mut request = HttpRequest::new(HttpRequestBody::from(body));
        *request.method_mut() = method.parse()?;
        *request.uri_mut() = url.as_str().parse()?;
        AwsAuthorizer::new(&credential, "s3", &self.region).try_authorize(&mut request, None)?;
        let response = self.client.execute(request).await?;
        let status = response.status();
        let body = response.into_body().bytes().await?;
        let body = String::from_utf8_lossy(&body).into_owned();
        anyhow::ensure!(
            status.is_success(),
            "S3 answered {status}: {}",
            body.chars().take(300).collect::<String>()
        );
        Ok(body)
    }
}

/// The body of CompleteMultipartUpload. ETags are quoted strings of hex digits; they are
/// escaped all the same.
fn completion_document(parts: &[(u32, String)]) -> String {
    let mut xml = String::from("<CompleteMultipartUpload>");
    for (number, etag) in parts {
        let etag = etag
            .replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;");
        xml.push_str(&format!(
            "<Part><PartNumber>{number}</PartNumber><ETag>{etag}</ETag></Part>"
        ));
    }
    xml.push_str("</CompleteMultipartUpload>");
    xml
}

fn parse_listing(xml: &str) -> anyhow::Result<ListMultipartUploadsResult> {
    quick_xml::de::from_str(xml).context("reading the ListMultipartUploads answer")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completion_names_each_part_by_its_own_number() {
        let xml = completion_document(&[(7, "\"ab\"".to_owned()), (15, "<x&y>".to_owned())]);
        assert_eq!(
            xml,
            "<CompleteMultipartUpload>\
             <Part><PartNumber>7</PartNumber><ETag>\"ab\"</ETag></Part>\
             <Part><PartNumber>15</PartNumber><ETag>&lt;x&amp;y&gt;</ETag></Part>\
             </CompleteMultipartUpload>"
        );
    }

    #[test]
    fn parses_list_multipart_uploads() {
        let body = r#"<?xml version="1.0" encoding="UTF-8"?>
<ListMultipartUploadsResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">
  <Bucket>b</Bucket><KeyMarker></KeyMarker><UploadIdMarker></UploadIdMarker>
  <NextKeyMarker>m/2</NextKeyMarker><NextUploadIdMarker>u2</NextUploadIdMarker>
  <IsTruncated>true</IsTruncated>
  <Upload><Key>m/1</Key><UploadId>u1</UploadId><Initiated>x</Initiated></Upload>
  <Prefix>m/</Prefix>
  <Upload><Key>m/&amp;2</Key><UploadId>u2</UploadId></Upload>
</ListMultipartUploadsResult>"#;
        let page = parse_listing(body).unwrap();
        let uploads: Vec<_> = page
            .upload
            .iter()
            .map(|u| (u.key.as_str(), u.upload_id.as_str()))
            .collect();
        assert_eq!(uploads, vec![("m/1", "u1"), ("m/&2", "u2")]);
        assert!(page.is_truncated);
        assert_eq!(page.next_key_marker.as_deref(), Some("m/2"));

        let empty = parse_listing(
            "<ListMultipartUploadsResult><IsTruncated>false</IsTruncated></ListMultipartUploadsResult>",
        )
        .unwrap();
        assert!(empty.upload.is_empty() && !empty.is_truncated);
    }
}
