//! The CLI as a client of a running `datafactory serve`: uploads files and
//! follows the job's event stream, or searches; output as for local runs.

use anyhow::{bail, Context, Result};
use datafactory_core::Config;
use datafactory_ingest::IngestSummary;
use serde_json::Value;
use std::io::BufRead;
use std::path::{Path, PathBuf};

/// Files per upload request.
const FILES_PER_REQUEST: usize = 64;

pub struct Client {
    base: String,
    key: Option<String>,
}

impl Client {
    pub fn new(server: &str, key: Option<String>) -> Client {
        Client { base: server.trim_end_matches('/').to_string(), key }
    }

    fn request(&self, method: &str, path: &str) -> ureq::Request {
        let r = ureq::request(method, &format!("{}{path}", self.base));
        match &self.key {
            Some(k) => r.set("Authorization", &format!("Bearer {k}")),
            None => r,
        }
    }

    /// Turns an HTTP error into the server's own message.
    fn answer(result: Result<ureq::Response, ureq::Error>) -> Result<ureq::Response> {
        match result {
            Ok(r) => Ok(r),
            Err(ureq::Error::Status(code, r)) => {
                let body: Value = r.into_json().unwrap_or_default();
                bail!("server answered {code}: {}", body["error"].as_str().unwrap_or("(no message)"))
            }
            Err(e) => Err(e).context("cannot reach the server"),
        }
    }

    /// Uploads the files (folders walked as a local ingest would) in batches,
    /// following each job until it ends; `progress` hears every event.
    pub fn ingest(
        &self,
        config: &Config,
        paths: &[PathBuf],
        collection: Option<&str>,
        all_files: bool,
        plan: Option<&datafactory_core::PlanOverride>,
        progress: &dyn Fn(&Value),
    ) -> Result<Vec<IngestSummary>> {
        let files = collect(paths, &config.ingest.extensions, all_files)?;
        if files.is_empty() {
            bail!("no files to upload");
        }
        let mut summaries = Vec::new();
        for batch in files.chunks(FILES_PER_REQUEST) {
            let boundary = format!("datafactory-{:016x}", std::process::id() as u64 ^ 0x5eed_5eed_5eed_5eed);
            let mut body = Vec::new();
            if let Some(c) = collection {
                body.extend(
                    format!(
                        "--{boundary}\r\nContent-Disposition: form-data; name=\"collection\"\r\n\r\n{c}\r\n"
                    )
                    .as_bytes(),
                );
            }
            if let Some(p) = plan {
                let p = serde_json::to_string(p)?;
                body.extend(
                    format!("--{boundary}\r\nContent-Disposition: form-data; name=\"plan\"\r\n\r\n{p}\r\n")
                        .as_bytes(),
                );
            }
            for (path, name) in batch {
                let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
                let name = name.replace(['"', '\r', '\n'], "_");
                body.extend(
                    format!(
                        "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
                    )
                    .as_bytes(),
                );
                body.extend(bytes);
                body.extend(b"\r\n");
            }
            body.extend(format!("--{boundary}--\r\n").as_bytes());
            let accepted: Value = Self::answer(
                self.request("POST", "/ingest")
                    .set("Content-Type", &format!("multipart/form-data; boundary={boundary}"))
                    .send_bytes(&body),
            )?
            .into_json()?;
            let id = accepted["job_id"].as_str().context("no job_id in the answer")?.to_string();
            summaries.push(self.follow(&id, progress)?);
        }
        Ok(summaries)
    }

    /// Reads the job's Server-Sent Events until `done`.
    fn follow(&self, id: &str, progress: &dyn Fn(&Value)) -> Result<IngestSummary> {
        let events = Self::answer(self.request("GET", &format!("/jobs/{id}/events")).call())?;
        let mut last = Value::Null;
        for line in std::io::BufReader::new(events.into_reader()).lines() {
            let line = line?;
            if let Some(data) = line.strip_prefix("data: ") {
                last = serde_json::from_str(data)?;
                progress(&last);
            }
        }
        if last.is_null() {
            // The job ended before the stream opened: read its record.
            last = Self::answer(self.request("GET", &format!("/jobs/{id}")).call())?.into_json()?;
        }
        match &last["summary"] {
            Value::Null => {
                bail!("job {id} ended {}: {}", last["state"], last["error"].as_str().unwrap_or(""))
            }
            s => Ok(serde_json::from_value(s.clone())?),
        }
    }

    pub fn search(
        &self,
        query: &str,
        top_k: Option<usize>,
        collection: Option<&str>,
        mode: Option<&str>,
        filter: &datafactory_store::SearchFilter,
    ) -> Result<Value> {
        let body = serde_json::json!({
            "query": query,
            "top_k": top_k,
            "collection": collection,
            "mode": mode,
            "filter": {"document_ids": filter.document_ids, "metadata": filter.metadata},
        });
        Ok(Self::answer(self.request("POST", "/search").send_json(body))?.into_json()?)
    }
}

/// Files to upload with the name the server will know them by: the path
/// relative to the folder named on the command line (the file name for files
/// named directly).
fn collect(paths: &[PathBuf], extensions: &[String], all_files: bool) -> Result<Vec<(PathBuf, String)>> {
    let mut out = Vec::new();
    for path in paths {
        if path.is_dir() {
            let walk = walkdir::WalkDir::new(path)
                .sort_by_file_name()
                .into_iter()
                .filter_entry(|e| e.depth() == 0 || !e.file_name().to_string_lossy().starts_with('.'));
            for e in walk {
                let e = e?;
                let ext = e
                    .path()
                    .extension()
                    .map(|x| x.to_string_lossy().to_ascii_lowercase())
                    .unwrap_or_default();
                if e.file_type().is_file() && (all_files || extensions.contains(&ext)) {
                    let rel = e.path().strip_prefix(path).unwrap_or(e.path());
                    let root = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                    out.push((e.path().to_path_buf(), format!("{root}/{}", rel.display())));
                }
            }
        } else if path.is_file() {
            let name =
                Path::new(path).file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            out.push((path.clone(), name));
        } else {
            bail!("cannot read {}", path.display());
        }
    }
    Ok(out)
}
