//! Job records in SQLite: created when a run starts, finished with its summary,
//! read back by id.
//!
//! Touches only the `jobs` table.

use super::*;

impl EmbeddedStore {
    /// Records a new running job; returns its id.
    /// Jobs are written by the writing process: this takes the writer first
    /// (so that taking it later cannot mistake this job for a dead one).
    pub fn create_job(&self, kind: &str, collection: Option<&str>) -> Result<String> {
        drop(self.writer()?);
        let now = now_ms();
        let id = format!(
            "job-{}",
            &blake3::hash(
                format!("{kind}{now}{}{:?}", std::process::id(), std::time::Instant::now()).as_bytes()
            )
            .to_hex()[..16]
        );
        lock(&self.db).execute(
            "INSERT INTO jobs (id, kind, state, collection, summary, created_at, updated_at)
             VALUES (?1, ?2, 'running', ?3, '{}', ?4, ?4)",
            params![id, kind, collection, now],
        )?;
        Ok(id)
    }

    /// Ends a job with its final state (`succeeded`, `failed`) and summary,
    /// once everything stored so far is durable: the word index is committed
    /// and the vector index saved (both synced), then the job's row is
    /// written with `synchronous=FULL`, which syncs SQLite's WAL and with it
    /// every commit before. A power cut before that point loses the job's
    /// end too: it then reads `interrupted`, never `succeeded`. If the
    /// indexes cannot be made durable (a full disk), the job ends `failed`
    /// with the reason, and the error is returned.
    pub fn finish_job(&self, id: &str, state: &str, summary: &serde_json::Value) -> Result<()> {
        let durable = self.checkpoint();
        let (state, summary) = match &durable {
            Ok(()) => (state, summary.clone()),
            Err(e) => {
                let mut summary = summary.clone();
                if let Some(map) = summary.as_object_mut() {
                    map.insert(
                        "error".into(),
                        format!("the stored documents could not be made durable: {e}").into(),
                    );
                }
                ("failed", summary)
            }
        };
        let now = now_ms();
        let db = lock(&self.db);
        db.pragma_update(None, "synchronous", "FULL")?;
        let level: i64 = db.query_row("PRAGMA synchronous", [], |r| r.get(0))?;
        let written = db.execute(
            "UPDATE jobs SET state = ?2, summary = ?3, updated_at = ?4, finished_at = ?4 WHERE id = ?1",
            params![id, state, summary.to_string(), now],
        );
        let restored = db.pragma_update(None, "synchronous", "NORMAL");
        drop(db);
        written?;
        restored?;
        self.note_durable(|| format!("job {id} ended {state}, written with synchronous={level}"));
        durable
    }

    pub fn get_job(&self, id: &str) -> Result<Option<JobRecord>> {
        let db = self.reader()?;
        Ok(db.query_row(&format!("{JOB_SELECT} WHERE id = ?1"), [id], job_from_row).optional()?)
    }

    /// The `limit` most recent jobs, newest first.
    pub fn list_jobs(&self, limit: u64) -> Result<Vec<JobRecord>> {
        let db = self.reader()?;
        let mut q = db.prepare(&format!("{JOB_SELECT} ORDER BY created_at DESC, id DESC LIMIT ?1"))?;
        let rows = q.query_map([limit.min(i64::MAX as u64) as i64], job_from_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

const JOB_SELECT: &str =
    "SELECT id, kind, state, collection, summary, created_at, updated_at, finished_at FROM jobs";

fn job_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<JobRecord> {
    Ok(JobRecord {
        id: r.get(0)?,
        kind: r.get(1)?,
        state: r.get(2)?,
        collection: r.get(3)?,
        summary: serde_json::from_str(&r.get::<_, String>(4)?).unwrap_or_default(),
        created_at: r.get(5)?,
        updated_at: r.get(6)?,
        finished_at: r.get(7)?,
    })
}
