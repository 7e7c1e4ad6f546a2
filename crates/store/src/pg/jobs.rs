//! Jobs and the fleet on PostgreSQL: job records, the queue that serve nodes
//! claim from with leases, heartbeats and the fleet's view of its nodes.
//!
//! Touches only the `jobs` and `nodes` tables.

use super::*;

impl PgStore {
    pub fn create_job(&self, kind: &str, collection: Option<&str>) -> Result<String> {
        let now = now_ms();
        let id = new_job_id(kind, now);
        let mut conn = self.conn()?;
        conn.execute(
            "INSERT INTO jobs (id, kind, state, collection, summary, created_at, updated_at)
             VALUES ($1, $2, 'running', $3, '{}', $4, $4)",
            &[&id, &kind, &collection, &now],
        )?;
        Ok(id)
    }

    /// Ends a job. In a fleet node, only a job this node holds (or one no
    /// node holds): a node that lost its lease leaves the job to the node
    /// that took it over.
    pub fn finish_job(&self, id: &str, state: &str, summary: &serde_json::Value) -> Result<()> {
        let node = self.node.read().unwrap_or_else(|p| p.into_inner()).clone();
        // Often called right after the job failed because the server went
        // away: the record is retried, so it does not stay `running`.
        let now = now_ms();
        self.pool.retrying(|conn| {
            conn.execute(
            // A fleet job interrupted (its node stopping) goes back to the queue.
            "UPDATE jobs SET summary = $3, updated_at = $4::bigint, lease_until = NULL,
                 state = CASE WHEN $2::text = 'interrupted' AND node IS NOT NULL THEN 'queued' ELSE $2::text END,
                 finished_at = CASE WHEN $2::text = 'interrupted' AND node IS NOT NULL THEN NULL ELSE $4::bigint END,
                 node = CASE WHEN $2::text = 'interrupted' AND node IS NOT NULL THEN NULL ELSE node END
             WHERE id = $1 AND (node IS NULL OR $5::text IS NULL OR node = $5)",
            &[&id, &state, summary, &now, &node],
        )
        })?;
        Ok(())
    }

    /// Names this process in the fleet (see `finish_job`).
    pub fn set_node(&self, node: &str) {
        *self.node.write().unwrap_or_else(|p| p.into_inner()) = Some(node.to_string());
    }

    /// Puts a job `node` holds back in the queue (the node stops: another
    /// node, or this one later, runs it again). A job that has ended stays
    /// ended: false.
    pub fn release_job(&self, id: &str, node: &str) -> Result<bool> {
        let mut conn = self.conn()?;
        let n = conn.execute(
            "UPDATE jobs SET state = 'queued', node = NULL, lease_until = NULL, finished_at = NULL,
                 updated_at = $3
             WHERE id = $1 AND node = $2 AND state = 'running'",
            &[&id, &node, &now_ms()],
        )?;
        Ok(n == 1)
    }

    pub fn get_job(&self, id: &str) -> Result<Option<JobRecord>> {
        let mut conn = self.conn()?;
        Ok(conn.query_opt(&format!("{JOB_SELECT} WHERE id = $1"), &[&id])?.map(|r| job_from_row(&r)))
    }

    /// The `limit` most recent jobs, newest first.
    pub fn list_jobs(&self, limit: u64) -> Result<Vec<JobRecord>> {
        let mut conn = self.conn()?;
        let limit = limit.min(i64::MAX as u64) as i64;
        let rows =
            conn.query(&format!("{JOB_SELECT} ORDER BY created_at DESC, id DESC LIMIT $1"), &[&limit])?;
        Ok(rows.iter().map(job_from_row).collect())
    }

    // ---- the fleet's work queue ----

    /// Queues a job with its input files; any node may claim it.
    pub fn enqueue_job(
        &self,
        kind: &str,
        collection: Option<&str>,
        request: &serde_json::Value,
        files: &[(String, Vec<u8>)],
    ) -> Result<String> {
        let now = now_ms();
        let id = new_job_id(kind, now);
        let mut conn = self.conn()?;
        let mut tx = conn.transaction()?;
        tx.execute(
            "INSERT INTO jobs (id, kind, state, collection, summary, request, created_at, updated_at)
             VALUES ($1, $2, 'queued', $3, '{}', $4, $5, $5)",
            &[&id, &kind, &collection, request, &now],
        )?;
        let insert = tx.prepare("INSERT INTO job_files (job_id, name, bytes) VALUES ($1, $2, $3)")?;
        for (name, bytes) in files {
            tx.execute(&insert, &[&id, name, bytes])?;
        }
        tx.commit()?;
        Ok(id)
    }

    /// Claims the oldest job that is queued, or running under a lease that
    /// ran out (its node died), for `node` until `lease` from now. Nodes
    /// claiming at once skip each other's rows: each gets another job.
    pub fn claim_job(&self, node: &str, lease: Duration) -> Result<Option<ClaimedJob>> {
        let now = now_ms();
        let mut conn = self.conn()?;
        let mut tx = conn.transaction()?;
        let Some(r) = tx.query_opt(
            "UPDATE jobs SET state = 'running', node = $1, lease_until = $3, attempts = attempts + 1,
                 updated_at = $2
             WHERE id = (SELECT id FROM jobs
                         WHERE state = 'queued' OR (state = 'running' AND lease_until < $2)
                         ORDER BY created_at, id LIMIT 1 FOR UPDATE SKIP LOCKED)
             RETURNING id, kind, collection, request, attempts",
            &[&node, &now, &(now + lease.as_millis() as i64)],
        )?
        else {
            return Ok(None);
        };
        let id: String = r.get(0);
        let files = tx
            .query("SELECT name, bytes FROM job_files WHERE job_id = $1 ORDER BY name", &[&id])?
            .iter()
            .map(|f| (f.get(0), f.get(1)))
            .collect();
        tx.commit()?;
        Ok(Some(ClaimedJob {
            id,
            kind: r.get(1),
            collection: r.get(2),
            request: r.get::<_, Option<serde_json::Value>>(3).unwrap_or_default(),
            attempt: r.get::<_, i32>(4) as u32,
            files,
        }))
    }

    /// Extends `node`'s lease on a job. False: the node lost it (the lease
    /// ran out and another node claimed the job, or the job went back to the
    /// queue). A job this node has just ended (its ingest wrote the end while
    /// the renewal was due) is not lost: true, and the ended record is left
    /// as it is.
    pub fn renew_lease(&self, id: &str, node: &str, lease: Duration) -> Result<bool> {
        let now = now_ms();
        let mut conn = self.conn()?;
        let n = conn.execute(
            "UPDATE jobs SET lease_until = CASE WHEN state = 'running' THEN $4 ELSE lease_until END,
                 updated_at = CASE WHEN state = 'running' THEN $3 ELSE updated_at END
             WHERE id = $1 AND node = $2 AND state <> 'queued'",
            &[&id, &node, &now, &(now + lease.as_millis() as i64)],
        )?;
        Ok(n == 1)
    }

    /// Ends a claimed job if `node` still holds it; its input files go.
    /// False: another node holds it now (its result is the one kept).
    pub fn finish_claimed_job(
        &self,
        id: &str,
        node: &str,
        state: &str,
        summary: &serde_json::Value,
    ) -> Result<bool> {
        let now = now_ms();
        let mut conn = self.conn()?;
        let mut tx = conn.transaction()?;
        let n = tx.execute(
            "UPDATE jobs SET state = $3, summary = $4, updated_at = $5, finished_at = $5, lease_until = NULL
             WHERE id = $1 AND node = $2 AND state = 'running'",
            &[&id, &node, &state, summary, &now],
        )?;
        if n == 1 {
            tx.execute("DELETE FROM job_files WHERE job_id = $1", &[&id])?;
        }
        tx.commit()?;
        Ok(n == 1)
    }

    /// Records that `node` (reachable at `address`) is alive, and which job it runs.
    pub fn node_heartbeat(&self, node: &str, address: &str, running_job: Option<&str>) -> Result<()> {
        let now = now_ms();
        let mut conn = self.conn()?;
        conn.execute(
            "INSERT INTO nodes (id, address, started_at, seen_at, running_job) VALUES ($1, $2, $3, $3, $4)
             ON CONFLICT (id) DO UPDATE SET address = excluded.address, seen_at = excluded.seen_at,
                 running_job = excluded.running_job",
            &[&node, &address, &now, &running_job],
        )?;
        Ok(())
    }

    /// The nodes seen within `alive` (the others are listed as not alive),
    /// and the queue's counts.
    pub fn fleet(&self, alive: Duration) -> Result<Fleet> {
        let now = now_ms();
        let mut conn = self.conn()?;
        let mut tx = read_snapshot(&mut conn)?;
        let nodes = tx
            .query("SELECT id, address, started_at, seen_at, running_job FROM nodes ORDER BY id", &[])?
            .iter()
            .map(|r| {
                let seen_at: i64 = r.get(3);
                FleetNode {
                    id: r.get(0),
                    address: r.get(1),
                    started_at: r.get(2),
                    seen_at,
                    running_job: r.get(4),
                    alive: now - seen_at <= alive.as_millis() as i64,
                }
            })
            .collect();
        let r = tx.query_one(
            "SELECT COUNT(*) FILTER (WHERE state = 'queued'),
                    COUNT(*) FILTER (WHERE state = 'running' AND lease_until >= $1),
                    COUNT(*) FILTER (WHERE state = 'running' AND lease_until < $1)
             FROM jobs WHERE state IN ('queued', 'running')",
            &[&now],
        )?;
        tx.commit()?;
        Ok(Fleet {
            nodes,
            queued: r.get::<_, i64>(0) as u64,
            running: r.get::<_, i64>(1) as u64,
            lease_expired: r.get::<_, i64>(2) as u64,
        })
    }
}

/// A fresh job id (unique across processes and nodes).
pub(crate) fn new_job_id(kind: &str, now: i64) -> String {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let seed = format!(
        "{kind}{now}{}{n}{:?}{:?}",
        std::process::id(),
        std::time::Instant::now(),
        std::thread::current().id()
    );
    format!("job-{}", &blake3::hash(seed.as_bytes()).to_hex()[..16])
}

const JOB_SELECT: &str =
    "SELECT id, kind, state, collection, summary, created_at, updated_at, finished_at FROM jobs";

fn job_from_row(r: &postgres::Row) -> JobRecord {
    JobRecord {
        id: r.get(0),
        kind: r.get(1),
        state: r.get(2),
        collection: r.get(3),
        summary: r.get(4),
        created_at: r.get(5),
        updated_at: r.get(6),
        finished_at: r.get(7),
    }
}
