//! The two S3 calls object_store does not offer: ListMultipartUploads and
//! AbortMultipartUpload for an upload id found that way. They let the service (and its
//! tests) prove that no unfinished multipart upload outlives a failed or crashed upload.
//! Requests are signed with object_store's own SigV4 authorizer and credentials.

use anyhow::Context;
use object_store::aws::{AmazonS3, AmazonS3ConfigKey, AwsAuthorizer};
use object_store::client::HttpRequestBody;

use crate::settings::StorageSettings;

/// An unfinished multipart upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingUpload {
    pub key: String,
    pub upload_id: String,
}

#[derive(Debug)]
pub(super) struct S3Uploads {
    client: reqwest::Client,
    credentials: object_store::aws::AwsCredentialProvider,
    /// `https://host[:port]/bucket` (path-style) or the virtual-hosted bucket URL.
    bucket_url: url::Url,
    region: String,
}

impl S3Uploads {
    pub(super) fn new(
        s3: &AmazonS3,
        bucket: &str,
        settings: &StorageSettings,
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
            client: reqwest::Client::builder()
                .connect_timeout(std::time::Duration::from_secs(3))
                .timeout(std::time::Duration::from_secs(30))
                .build()?,
            credentials: s3.credentials().clone(),
            bucket_url: url::Url::parse(&base).context("S3 endpoint URL")?,
            region,
        })
    }

    async fn send(&self, method: reqwest::Method, url: url::Url) -> anyhow::Result<String> {
        let credential = self.credentials.get_credential().await?;
        let mut request = object_store::client::HttpRequest::new(HttpRequestBody::empty());
        *request.method_mut() = method.clone();
        *request.uri_mut() = url.as_str().parse()?;
        AwsAuthorizer::new(&credential, "s3", &self.region).try_authorize(&mut request, None)?;

        let mut builder = self.client.request(method, url);
        for (name, value) in request.headers() {
            builder = builder.header(name, value);
        }
        let response = builder.send().await?;
        let status = response.status();
        let body = response.text().await?;
        anyhow::ensure!(
            status.is_success() || status == reqwest::StatusCode::NOT_FOUND,
            "S3 answered {status}: {}",
            body.chars().take(300).collect::<String>()
        );
        Ok(body)
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
            let body = self.send(reqwest::Method::GET, url).await?;
            for upload in xml_blocks(&body, "Upload") {
                if let (Some(key), Some(upload_id)) =
                    (xml_text(upload, "Key"), xml_text(upload, "UploadId"))
                {
                    found.push(PendingUpload { key, upload_id });
                }
            }
            let truncated = xml_text(&body, "IsTruncated").is_some_and(|v| v == "true");
            let next = xml_text(&body, "NextKeyMarker").zip(xml_text(&body, "NextUploadIdMarker"));
            match (truncated, next) {
                (true, Some(next)) if markers.as_ref() != Some(&next) => markers = Some(next),
                _ => return Ok(found),
            }
        }
    }

    pub(super) async fn abort(&self, upload: &PendingUpload) -> anyhow::Result<()> {
        let mut url = self.bucket_url.clone();
        url.path_segments_mut()
            .map_err(|_| anyhow::anyhow!("S3 endpoint cannot be a base URL"))?
            .extend(upload.key.split('/'));
        url.query_pairs_mut()
            .append_pair("uploadId", &upload.upload_id);
        self.send(reqwest::Method::DELETE, url).await?;
        Ok(())
    }
}

/// The inner texts of every `<tag>…</tag>` element. The ListMultipartUploads answer is flat
/// and small, so a scan is enough; no XML entity in a key of ours needs decoding since keys
/// are `<prefix>/<uuid>`.
fn xml_blocks<'a>(xml: &'a str, tag: &str) -> Vec<&'a str> {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let mut blocks = Vec::new();
    let mut rest = xml;
    while let Some(start) = rest.find(&open) {
        let after = &rest[start + open.len()..];
        let Some(end) = after.find(&close) else { break };
        blocks.push(&after[..end]);
        rest = &after[end + close.len()..];
    }
    blocks
}

fn xml_text(xml: &str, tag: &str) -> Option<String> {
    xml_blocks(xml, tag).first().map(|s| s.trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_list_multipart_uploads() {
        let body = r#"<?xml version="1.0" encoding="UTF-8"?>
<ListMultipartUploadsResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">
  <Bucket>b</Bucket><KeyMarker></KeyMarker><UploadIdMarker></UploadIdMarker>
  <NextKeyMarker>m/2</NextKeyMarker><NextUploadIdMarker>u2</NextUploadIdMarker>
  <IsTruncated>false</IsTruncated>
  <Upload><Key>m/1</Key><UploadId>u1</UploadId><Initiated>x</Initiated></Upload>
  <Upload><Key>m/2</Key><UploadId>u2</UploadId></Upload>
</ListMultipartUploadsResult>"#;
        let uploads: Vec<_> = xml_blocks(body, "Upload")
            .into_iter()
            .map(|u| {
                (
                    xml_text(u, "Key").unwrap(),
                    xml_text(u, "UploadId").unwrap(),
                )
            })
            .collect();
        assert_eq!(
            uploads,
            vec![("m/1".into(), "u1".into()), ("m/2".into(), "u2".into())]
        );
        assert_eq!(xml_text(body, "IsTruncated").as_deref(), Some("false"));
    }
}
