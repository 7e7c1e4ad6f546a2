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

    /// Ends a job with its final state (`succeeded`, `failed`) and summary.
    pub fn finish_job(&self, id: &str, state: &str, summary: &serde_json::Value) -> Result<()> {
        let now = now_ms();
        lock(&self.db).execute(
            "UPDATE jobs SET state = ?2, summary = ?3, updated_at = ?4, finished_at = ?4 WHERE id = ?1",
            params![id, state, summary.to_string(), now],
        )?;
        Ok(())
    }

    pub fn get_job(&self, id: &str) -> Result<Option<JobRecord>> {
        let db = self.reader()?;
        Ok(db
            .query_row(
                "SELECT id, kind, state, collection, summary, created_at, updated_at, finished_at FROM jobs WHERE id = ?1",
                [id],
                |r| {
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
                },
            )
            .optional()?)
    }
}
