//! Endpoints of one kind of worker, their health, and the calls over them.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How a [`Pool`] batches, retries and fails over.
#[derive(Debug, Clone)]
pub struct PoolSettings {
    /// Items (texts, pairs) per request at most.
    pub batch: usize,
    /// Requests in flight per endpoint at most.
    pub parallel: usize,
    /// Tries of one request.
    pub attempts: u32,
    /// Wait before the first retry; doubled at each further one.
    pub backoff: Duration,
    /// Failures in a row that take an endpoint out.
    pub failures_before_down: u32,
    /// How long an endpoint stays out.
    pub down_for: Duration,
}

impl PoolSettings {
    pub fn from_config(c: &datafactory_core::config::RemoteConfig) -> PoolSettings {
        PoolSettings {
            batch: c.batch.max(1),
            parallel: c.parallel.max(1),
            attempts: c.attempts.max(1),
            backoff: Duration::from_millis(c.backoff_ms),
            failures_before_down: c.failures_before_down.max(1),
            down_for: Duration::from_secs(c.down_seconds),
        }
    }
}

/// Why one request failed.
#[derive(Debug, Clone)]
pub enum CallError {
    /// The endpoint is unreachable, timed out or failed (5xx): another
    /// endpoint, or the same one later, may answer.
    Retry(String),
    /// The request itself is refused (4xx): no endpoint would take it.
    Fatal(String),
}

#[derive(Debug, Clone, Default)]
struct Health {
    in_flight: usize,
    consecutive_failures: u32,
    down_until: Option<Instant>,
    requests: u64,
    failures: u64,
}

/// One endpoint as the pool knows it (for `/ready` and tests).
pub type EndpointState = datafactory_core::WorkerState;

/// The endpoints of one kind of worker.
pub struct Pool {
    urls: Vec<String>,
    health: Mutex<Vec<Health>>,
    settings: PoolSettings,
    next: AtomicUsize,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Pool {
    /// A pool over `urls` (trailing slashes dropped).
    pub fn new(urls: &[String], settings: PoolSettings) -> Pool {
        let urls: Vec<String> = urls.iter().map(|u| u.trim_end_matches('/').to_string()).collect();
        Pool {
            health: Mutex::new(vec![Health::default(); urls.len()]),
            urls,
            settings,
            next: AtomicUsize::new(0),
        }
    }

    pub fn urls(&self) -> &[String] {
        &self.urls
    }

    pub fn settings(&self) -> &PoolSettings {
        &self.settings
    }

    pub fn states(&self) -> Vec<EndpointState> {
        let now = Instant::now();
        lock(&self.health)
            .iter()
            .zip(&self.urls)
            .map(|(h, url)| EndpointState {
                url: url.clone(),
                in_pool: h.down_until.is_none_or(|t| t <= now),
                consecutive_failures: h.consecutive_failures,
                requests: h.requests,
                failures: h.failures,
            })
            .collect()
    }

    /// The endpoint for the next request: among those in the pool and not
    /// at their `parallel` limit, the least busy (ties in turn); when all are
    /// out, the one whose time out ends first (it may be back). `avoid`: the
    /// endpoint that just failed this request, when there is another.
    fn pick(&self, avoid: Option<usize>) -> usize {
        let now = Instant::now();
        let mut health = lock(&self.health);
        let n = health.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let up = |h: &Health| h.down_until.is_none_or(|t| t <= now);
        let candidates: Vec<usize> = (0..n)
            .map(|k| (start + k) % n)
            .filter(|&i| up(&health[i]) && (Some(i) != avoid || n == 1))
            .collect();
        let chosen = candidates
            .iter()
            .copied()
            .min_by_key(|&i| (health[i].in_flight >= self.settings.parallel, health[i].in_flight))
            .or_else(|| (0..n).filter(|&i| Some(i) != avoid || n == 1).min_by_key(|&i| health[i].down_until))
            .unwrap_or(0);
        health[chosen].in_flight += 1;
        health[chosen].requests += 1;
        chosen
    }

    fn finish(&self, i: usize, ok: bool) {
        let mut health = lock(&self.health);
        let h = &mut health[i];
        h.in_flight = h.in_flight.saturating_sub(1);
        if ok {
            h.consecutive_failures = 0;
            h.down_until = None;
        } else {
            h.failures += 1;
            h.consecutive_failures += 1;
            if h.consecutive_failures >= self.settings.failures_before_down {
                h.down_until = Some(Instant::now() + self.settings.down_for);
            }
        }
    }

    /// While every endpoint is out of the pool: how long until the first
    /// comes back.
    fn all_down(&self) -> Option<Duration> {
        let now = Instant::now();
        let health = lock(&self.health);
        health.iter().map(|h| h.down_until.filter(|&t| t > now).map(|t| t - now)).min().flatten()
    }

    /// Runs `call(url)` until an endpoint answers: up to `attempts` tries,
    /// each failed one followed by a backoff and a try on another endpoint.
    /// While every endpoint is out of the pool (each failed
    /// `failures_before_down` times in a row, for `down_for`), no call is
    /// made: the error comes at once, so a caller with a fallback (search
    /// without the reranker, say) does not wait for endpoints known to be down.
    pub fn call<T>(&self, call: impl Fn(&str) -> Result<T, CallError>) -> Result<T, String> {
        let mut errors = Vec::new();
        let mut avoid = None;
        for attempt in 0..self.settings.attempts {
            if let Some(back_in) = self.all_down() {
                errors.push(format!(
                    "every worker is left out after failing {} times in a row (the first is tried again in {} s)",
                    self.settings.failures_before_down,
                    back_in.as_secs() + 1
                ));
                break;
            }
            if attempt > 0 {
                std::thread::sleep(self.settings.backoff * 2u32.saturating_pow(attempt - 1).min(16));
            }
            let i = self.pick(avoid);
            match call(&self.urls[i]) {
                Ok(v) => {
                    self.finish(i, true);
                    return Ok(v);
                }
                Err(CallError::Fatal(e)) => {
                    self.finish(i, true); // the endpoint works; the request is wrong
                    return Err(e);
                }
                Err(CallError::Retry(e)) => {
                    tracing::warn!("worker {} failed ({e}); trying again", self.urls[i]);
                    self.finish(i, false);
                    errors.push(e);
                    avoid = Some(i);
                }
            }
        }
        Err(format!("no worker answered: {}", collapse(&errors)))
    }

    /// Cuts `items` into batches of `batch`, sends them at once (as many
    /// requests in flight as the endpoints' `parallel` allows), each through
    /// [`Pool::call`], and joins the answers in order. `call(url, batch)`
    /// must answer one result per item.
    pub fn map_batches<I: Sync, T: Send>(
        &self,
        items: &[I],
        call: impl Fn(&str, &[I]) -> Result<Vec<T>, CallError> + Sync,
    ) -> Result<Vec<T>, String> {
        let batches: Vec<&[I]> = items.chunks(self.settings.batch).collect();
        if batches.len() <= 1 {
            return batches.first().map_or(Ok(Vec::new()), |b| self.checked(b, &call));
        }
        let workers = (self.urls.len() * self.settings.parallel).clamp(1, batches.len());
        let next = AtomicUsize::new(0);
        type Answer<T> = Option<Result<Vec<T>, String>>;
        let results: Mutex<Vec<Answer<T>>> = Mutex::new((0..batches.len()).map(|_| None).collect());
        std::thread::scope(|s| {
            for _ in 0..workers {
                s.spawn(|| loop {
                    let k = next.fetch_add(1, Ordering::Relaxed);
                    let Some(batch) = batches.get(k) else { break };
                    let r = self.checked(batch, &call);
                    let failed = r.is_err();
                    lock(&results)[k] = Some(r);
                    if failed {
                        next.store(batches.len(), Ordering::Relaxed); // stop the others early
                    }
                });
            }
        });
        let mut out = Vec::with_capacity(items.len());
        for r in results.into_inner().unwrap_or_else(|p| p.into_inner()) {
            match r {
                Some(Ok(v)) => out.extend(v),
                Some(Err(e)) => return Err(e),
                None => return Err("a batch was not sent (an earlier one failed)".into()),
            }
        }
        Ok(out)
    }

    /// One batch through [`Pool::call`], with its answer's length checked.
    fn checked<I, T>(
        &self,
        batch: &[I],
        call: &(impl Fn(&str, &[I]) -> Result<Vec<T>, CallError> + Sync),
    ) -> Result<Vec<T>, String> {
        self.call(|url| {
            let v = call(url, batch)?;
            if v.len() == batch.len() {
                Ok(v)
            } else {
                Err(CallError::Retry(format!(
                    "{url} answered {} results for {} inputs",
                    v.len(),
                    batch.len()
                )))
            }
        })
    }
}

/// A request's failure as a [`CallError`]: 4xx (but 408 and 429) is the
/// request's fault, the rest the endpoint's. `what` names the call.
pub(crate) fn call_error(url: &str, what: &str, e: ureq::Error) -> CallError {
    match e {
        ureq::Error::Status(code, response) => {
            let body = response.into_string().unwrap_or_default();
            let message = serde_json::from_str::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v["error"].as_str().map(String::from))
                .unwrap_or(body);
            let m =
                format!("{what} at {url} answered {code}: {}", message.chars().take(300).collect::<String>());
            if (400..500).contains(&code) && code != 408 && code != 429 {
                CallError::Fatal(m)
            } else {
                CallError::Retry(m)
            }
        }
        e => CallError::Retry(format!("{what} at {url} unreachable: {e}")),
    }
}

/// The errors of a call's tries, each distinct one once with its count.
fn collapse(errors: &[String]) -> String {
    let mut seen: Vec<(&str, usize)> = Vec::new();
    for e in errors {
        match seen.iter_mut().find(|(m, _)| *m == e.as_str()) {
            Some((_, n)) => *n += 1,
            None => seen.push((e, 1)),
        }
    }
    let parts: Vec<String> =
        seen.iter().map(|(m, n)| if *n > 1 { format!("{m} ({n} tries)") } else { m.to_string() }).collect();
    parts.join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(n: usize) -> Pool {
        let urls: Vec<String> = (0..n).map(|i| format!("http://w{i}")).collect();
        Pool::new(
            &urls,
            PoolSettings {
                batch: 3,
                parallel: 2,
                attempts: 3,
                backoff: Duration::from_millis(1),
                failures_before_down: 2,
                down_for: Duration::from_secs(60),
            },
        )
    }

    #[test]
    fn a_failed_request_goes_to_another_endpoint_and_a_failing_one_is_left_out() {
        let p = pool(2);
        let seen = Mutex::new(Vec::new());
        for _ in 0..4 {
            let r = p.call(|url| {
                lock(&seen).push(url.to_string());
                if url == "http://w0" {
                    Err(CallError::Retry("down".into()))
                } else {
                    Ok(7)
                }
            });
            assert_eq!(r.unwrap(), 7);
        }
        let states = p.states();
        assert!(!states[0].in_pool, "{states:?}");
        assert_eq!(states[0].consecutive_failures, 2);
        // After it was left out, every request went to w1 first.
        let seen = lock(&seen).clone();
        assert_eq!(seen.iter().filter(|u| *u == "http://w0").count(), 2, "{seen:?}");
    }

    #[test]
    fn while_every_endpoint_is_out_no_call_is_made_and_the_error_says_why_once() {
        let p = pool(1);
        let tries = AtomicUsize::new(0);
        let down = |_: &str| -> Result<(), CallError> {
            tries.fetch_add(1, Ordering::Relaxed);
            Err(CallError::Retry("connection refused".into()))
        };
        // Two failures in a row leave the only endpoint out: the third try is not made.
        let e = p.call(down).unwrap_err();
        assert_eq!(tries.load(Ordering::Relaxed), 2);
        assert!(
            e.starts_with("no worker answered: connection refused (2 tries); every worker is left out"),
            "{e}"
        );
        // While it is out: an answer at once, without a call.
        let e = p.call(down).unwrap_err();
        assert_eq!(tries.load(Ordering::Relaxed), 2);
        assert!(e.contains("every worker is left out after failing 2 times in a row"), "{e}");
    }

    #[test]
    fn batches_keep_their_order_and_a_refused_request_is_not_retried() {
        let p = pool(2);
        let items: Vec<u32> = (0..10).collect();
        let out = p.map_batches(&items, |_, b| Ok(b.iter().map(|x| x * 2).collect())).unwrap();
        assert_eq!(out, items.iter().map(|x| x * 2).collect::<Vec<_>>());
        let tries = AtomicUsize::new(0);
        let e = p
            .call(|_| -> Result<(), CallError> {
                tries.fetch_add(1, Ordering::Relaxed);
                Err(CallError::Fatal("bad input".into()))
            })
            .unwrap_err();
        assert_eq!(e, "bad input");
        assert_eq!(tries.load(Ordering::Relaxed), 1);
        let short = p.map_batches(&items, |_, b| Ok(b[1..].to_vec()));
        assert!(short.unwrap_err().contains("answered 2 results for 3 inputs"));
    }
}
