//! The dispatcher: one thread per lane (an endpoint's slot) pulls the next
//! request from a shared plan.
//!
//! `affine` keeps each group of requests that share a prefix (the chunks of
//! one document, or of one window of a long document) on as few lanes as
//! finishes soonest: a lane that is free takes, in order, a retry that is
//! due, the next chunk of its own run, an untouched document (on the server
//! with the fewest documents, so different documents go to different
//! servers), or the tail of the longest run of another lane, when the cost
//! model says the two halves finish sooner than the one, despite the prefix
//! the joining lane must evaluate first. On servers that share one prefix
//! cache across their slots, joining a document that server has warmed costs
//! no prefill, and nobody joins a document whose first (warming) request is
//! still running there. `round_robin` is the seed's thread pool: as many
//! threads as slots, chunk `i` to server `i mod n`.
//!
//! Failures: a failed request is retried after a backoff on another
//! endpoint; an endpoint failing `failures_before_down` times in a row is
//! taken out for `down_seconds`, its runs are handed back, and it is health
//! checked before it gets work again. A request that is out of attempts, or
//! that no endpoint is left to serve, is left without an LLM answer (the
//! caller gives it a heuristic context).

use crate::client::{ApiKind, CallError, Client, Completion, Request};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

/// One request to make.
pub(crate) struct Job {
    pub group: usize,
    pub prompt: String,
    /// Estimated tokens after the shared prefix.
    pub suffix_tokens: usize,
}

/// Requests sharing one prompt prefix, in document order.
pub(crate) struct Group {
    pub jobs: Vec<usize>,
    pub prefix_tokens: usize,
}

pub(crate) struct Endpoint {
    pub client: Client,
    pub slots: usize,
    pub pin_slots: bool,
    pub shared_prefix_cache: bool,
}

/// Health of an endpoint, kept across calls.
#[derive(Debug, Clone, Default)]
pub(crate) struct Health {
    pub consecutive_failures: u32,
    pub down_until: Option<Instant>,
    /// Seconds per evaluated prompt token and per answer token (EWMA of
    /// what the server reported or what the call took).
    pub prefill_s: f64,
    pub decode_s: f64,
    pub answer_tokens: f64,
    /// Answers the rates were learnt from (until one, they are guesses).
    pub samples: u32,
    /// The largest `num_ctx` sent to it (Ollama): Ollama reloads the model
    /// when `num_ctx` changes, so a later run asks no less.
    pub num_ctx: usize,
}

#[derive(Debug, Clone, Default)]
pub(crate) struct EndpointCounters {
    pub requests: u64,
    pub failures: u64,
    pub prompt_tokens: u64,
    pub cached_tokens: u64,
    pub evaluated_tokens: u64,
    pub completion_tokens: u64,
    pub seconds: f64,
    /// Answers refused as no context (`answer::Judge`), and why the first was.
    pub unusable: u64,
    pub first_unusable: Option<String>,
}

pub(crate) struct Settings {
    pub round_robin: bool,
    pub attempts: u32,
    pub backoff: Duration,
    pub failures_before_down: u32,
    pub down_for: Duration,
    pub max_tokens: u32,
    pub temperature: f32,
    pub num_ctx: Option<usize>,
    pub judge: crate::answer::Judge,
}

/// What became of one job.
pub(crate) struct JobResult {
    pub outcome: Result<(Completion, usize), String>,
    pub started: Instant,
    pub finished: Instant,
}

struct Run {
    group: usize,
    next: usize,
    end: usize,
}

struct Lane {
    endpoint: usize,
    slot: usize,
    run: Option<Run>,
    /// The group whose prefix this lane's slot holds.
    cached_group: Option<usize>,
    busy: bool,
    /// Its request in flight is the first of a run (prefix not cached).
    cold: bool,
}

struct GroupState {
    unassigned: Vec<(usize, usize)>,
    started: bool,
    warmed: Vec<bool>,
    warming: Vec<bool>,
}

struct Retry {
    job: usize,
    not_before: Instant,
    last_endpoint: usize,
}

struct State {
    groups: Vec<GroupState>,
    lanes: Vec<Lane>,
    retry: Vec<Retry>,
    attempts: Vec<u32>,
    results: Vec<Option<JobResult>>,
    remaining: usize,
    rr_next: usize,
    /// Round robin's order: the documents of a batch interleaved, as when
    /// each is ingested at once with its own thread pool (the seed).
    rr_order: Vec<usize>,
    probing: Vec<bool>,
}

enum Pick {
    /// `warms`: the first request of a group on a server that shares its
    /// prefix cache; its answer is streamed, and the group counts as warmed
    /// there as soon as the first token arrives.
    Job {
        job: usize,
        endpoint: usize,
        slot: Option<usize>,
        warms: bool,
    },
    Probe(usize),
    Wait(Duration),
    Exit,
}

pub(crate) struct Dispatcher<'a> {
    pub jobs: &'a [Job],
    pub groups: &'a [Group],
    pub endpoints: &'a [Endpoint],
    pub health: &'a Mutex<Vec<Health>>,
    pub counters: &'a Mutex<Vec<EndpointCounters>>,
    pub settings: &'a Settings,
    state: Mutex<State>,
    wake: Condvar,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl<'a> Dispatcher<'a> {
    pub fn new(
        jobs: &'a [Job],
        groups: &'a [Group],
        endpoints: &'a [Endpoint],
        health: &'a Mutex<Vec<Health>>,
        counters: &'a Mutex<Vec<EndpointCounters>>,
        settings: &'a Settings,
    ) -> Dispatcher<'a> {
        // Lanes slot-major: slot 0 of every endpoint first, so the first
        // documents land on different servers.
        let mut lanes = Vec::new();
        let max_slots = endpoints.iter().map(|e| e.slots).max().unwrap_or(0);
        for slot in 0..max_slots {
            for (endpoint, e) in endpoints.iter().enumerate() {
                if slot < e.slots {
                    lanes.push(Lane {
                        endpoint,
                        slot,
                        run: None,
                        cached_group: None,
                        busy: false,
                        cold: false,
                    });
                }
            }
        }
        let groups_state = groups
            .iter()
            .map(|g| GroupState {
                unassigned: if g.jobs.is_empty() { vec![] } else { vec![(0, g.jobs.len())] },
                started: false,
                warmed: vec![false; endpoints.len()],
                warming: vec![false; endpoints.len()],
            })
            .collect();
        let state = State {
            groups: groups_state,
            lanes,
            retry: Vec::new(),
            attempts: vec![0; jobs.len()],
            results: (0..jobs.len()).map(|_| None).collect(),
            remaining: jobs.len(),
            rr_next: 0,
            rr_order: {
                let longest = groups.iter().map(|g| g.jobs.len()).max().unwrap_or(0);
                (0..longest).flat_map(|k| groups.iter().filter_map(move |g| g.jobs.get(k).copied())).collect()
            },
            probing: vec![false; endpoints.len()],
        };
        Dispatcher {
            jobs,
            groups,
            endpoints,
            health,
            counters,
            settings,
            state: Mutex::new(state),
            wake: Condvar::new(),
        }
    }

    /// Runs every job; `done` is called (from worker threads) after each
    /// success, before the next request on that lane.
    pub fn run(self, done: &(dyn Fn(usize, &Completion, usize) + Sync)) -> Vec<Option<JobResult>> {
        let lanes = lock(&self.state).lanes.len();
        if self.jobs.is_empty() || lanes == 0 {
            return lock(&self.state).results.drain(..).collect();
        }
        std::thread::scope(|scope| {
            for lane in 0..lanes {
                let this = &self;
                scope.spawn(move || this.worker(lane, done));
            }
        });
        let mut state = lock(&self.state);
        state.results.drain(..).collect()
    }

    fn worker(&self, lane: usize, done: &(dyn Fn(usize, &Completion, usize) + Sync)) {
        loop {
            let pick = {
                let mut state = lock(&self.state);
                let pick = self.pick(&mut state, lane);
                if let Pick::Wait(d) = pick {
                    let _ = self.wake.wait_timeout(state, d);
                    continue;
                }
                pick
            };
            match pick {
                Pick::Exit => return,
                Pick::Wait(_) => {}
                Pick::Probe(endpoint) => {
                    let ok = self.endpoints[endpoint].client.health().is_ok();
                    {
                        let mut h = lock(self.health);
                        h[endpoint].down_until =
                            if ok { None } else { Some(Instant::now() + self.settings.down_for) };
                        if ok {
                            h[endpoint].consecutive_failures = 0;
                            tracing::info!("LLM endpoint {} is back", self.endpoints[endpoint].client.base);
                        }
                    }
                    let mut state = lock(&self.state);
                    state.probing[endpoint] = false;
                    drop(state);
                    self.wake.notify_all();
                }
                Pick::Job { job, endpoint, slot, warms } => {
                    let started = Instant::now();
                    let s = self.settings;
                    let request = Request {
                        prompt: &self.jobs[job].prompt,
                        max_tokens: s.max_tokens,
                        temperature: s.temperature,
                        slot,
                        num_ctx: match s.num_ctx {
                            Some(n) if self.endpoints[endpoint].client.kind == ApiKind::Ollama => {
                                let mut h = lock(self.health);
                                h[endpoint].num_ctx = h[endpoint].num_ctx.max(n);
                                Some(h[endpoint].num_ctx)
                            }
                            _ => None,
                        },
                    };
                    let client = &self.endpoints[endpoint].client;
                    let result = if warms {
                        let group = self.jobs[job].group;
                        client.complete_streaming(&request, &mut || {
                            // The prompt is evaluated: the other lanes of
                            // this server may fork its prefix now.
                            let mut st = lock(&self.state);
                            st.groups[group].warmed[endpoint] = true;
                            st.groups[group].warming[endpoint] = false;
                            st.lanes[lane].cold = false;
                            drop(st);
                            self.wake.notify_all();
                        })
                    } else {
                        client.complete(&request)
                    };
                    let result = result.and_then(|c| {
                        match self.settings.judge.unusable(&c.text, &self.jobs[job].prompt) {
                            None => Ok(c),
                            Some(why) => Err(CallError::Unusable {
                                url: client.base.clone(),
                                model: client.model.clone(),
                                why,
                                answer: Box::new(c),
                            }),
                        }
                    });
                    if let Ok(c) = &result {
                        done(job, c, endpoint);
                    }
                    self.finish(lane, job, endpoint, started, result);
                    self.wake.notify_all();
                }
            }
        }
    }

    fn finish(
        &self,
        lane: usize,
        job: usize,
        endpoint: usize,
        started: Instant,
        result: Result<Completion, CallError>,
    ) {
        let now = Instant::now();
        let group = self.jobs[job].group;
        {
            let mut counters = lock(self.counters);
            let c = &mut counters[endpoint];
            c.requests += 1;
            c.seconds += now.duration_since(started).as_secs_f64();
            let answered = match &result {
                Ok(r) => Some(r),
                Err(CallError::Unusable { why, answer, .. }) => {
                    c.unusable += 1;
                    c.first_unusable.get_or_insert_with(|| why.clone());
                    Some(&**answer)
                }
                Err(_) => {
                    c.failures += 1;
                    None
                }
            };
            if let Some(r) = answered {
                c.prompt_tokens += r.prompt_tokens.unwrap_or(0);
                c.cached_tokens += r.cached_tokens.unwrap_or(0);
                c.evaluated_tokens += r.evaluated_tokens.unwrap_or(0);
                c.completion_tokens += r.completion_tokens.unwrap_or(0);
            }
        }
        let mut state = lock(&self.state);
        let st = &mut *state;
        st.lanes[lane].busy = false;
        st.lanes[lane].cold = false;
        st.groups[group].warming[endpoint] = false;
        match result {
            Ok(c) => {
                {
                    let mut h = lock(self.health);
                    let h = &mut h[endpoint];
                    h.consecutive_failures = 0;
                    h.down_until = None;
                    learn(h, &c);
                }
                st.groups[group].warmed[endpoint] = true;
                st.lanes[lane].cached_group = Some(group);
                st.results[job] = Some(JobResult { outcome: Ok((c, endpoint)), started, finished: now });
                st.remaining -= 1;
            }
            Err(e) => {
                if matches!(e, CallError::Unusable { .. }) {
                    // Summed up in one warning at the end of the run.
                    tracing::debug!("{e}");
                } else {
                    tracing::warn!("enrichment request failed: {e}");
                }
                // Refused by the server, or answered with no context: this
                // request's outcome is final, and neither says the server is
                // unhealthy.
                let refused = matches!(e, CallError::Refused { .. } | CallError::Unusable { .. });
                let down = {
                    let mut h = lock(self.health);
                    let h = &mut h[endpoint];
                    // A refused request says nothing of the server's health.
                    if !refused {
                        h.consecutive_failures += 1;
                    }
                    if h.consecutive_failures >= self.settings.failures_before_down && h.down_until.is_none()
                    {
                        h.down_until = Some(now + self.settings.down_for);
                        tracing::warn!(
                            "LLM endpoint {} taken out for {:?} after {} failures",
                            self.endpoints[endpoint].client.base,
                            self.settings.down_for,
                            h.consecutive_failures
                        );
                        true
                    } else {
                        h.down_until.is_some()
                    }
                };
                st.lanes[lane].cached_group = None;
                if down {
                    // Hand back the runs of every lane of that endpoint.
                    for l in st.lanes.iter_mut().filter(|l| l.endpoint == endpoint) {
                        if let Some(run) = l.run.take() {
                            if run.next < run.end {
                                st.groups[run.group].unassigned.push((run.next, run.end));
                            }
                        }
                    }
                }
                st.attempts[job] += 1;
                let attempts = st.attempts[job];
                if refused || attempts >= self.settings.attempts {
                    st.results[job] = Some(JobResult { outcome: Err(e.to_string()), started, finished: now });
                    st.remaining -= 1;
                } else {
                    let backoff = self.settings.backoff * 2u32.saturating_pow(attempts - 1);
                    st.retry.push(Retry { job, not_before: now + backoff, last_endpoint: endpoint });
                }
            }
        }
    }

    fn pick(&self, st: &mut State, lane: usize) -> Pick {
        if st.remaining == 0 {
            return Pick::Exit;
        }
        let now = Instant::now();
        let health = lock(self.health).clone();
        let up: Vec<bool> = health.iter().map(|h| h.down_until.is_none_or(|t| t <= now)).collect();
        let endpoint = st.lanes[lane].endpoint;
        // Nothing can serve: whatever is left gets no LLM answer.
        if !up.iter().any(|&u| u) && !st.probing.iter().any(|&p| p) && st.lanes.iter().all(|l| !l.busy) {
            let all_down_long = health.iter().all(|h| h.down_until.is_some());
            if all_down_long {
                self.give_up_all(st, now, "no LLM endpoint is up");
                return Pick::Exit;
            }
        }
        if self.settings.round_robin {
            return match self.pick_round_robin(st, lane, now, &up) {
                Some((job, _)) => {
                    st.lanes[lane].busy = true;
                    Pick::Job { job, endpoint: st.lanes[lane].endpoint, slot: None, warms: false }
                }
                None => Pick::Wait(Duration::from_millis(20)),
            };
        }
        if !up[endpoint] {
            self.release(st, lane);
            let until = health[endpoint].down_until.map_or(Duration::from_millis(100), |t| t - now);
            return Pick::Wait(until.min(Duration::from_millis(200)));
        }
        if health[endpoint].down_until.is_some() {
            // Its time out is over: one lane checks its health first.
            if st.probing[endpoint] {
                return Pick::Wait(Duration::from_millis(50));
            }
            st.probing[endpoint] = true;
            return Pick::Probe(endpoint);
        }
        match self.pick_affine(st, lane, now, &up, &health) {
            Some((job, cold)) => {
                let l = &mut st.lanes[lane];
                l.busy = true;
                l.cold = cold;
                let e = &self.endpoints[endpoint];
                let group = self.jobs[job].group;
                if cold {
                    st.groups[group].warming[endpoint] = true;
                }
                st.groups[group].started = true;
                let slot = e.pin_slots.then_some(l.slot);
                let warms = cold && e.shared_prefix_cache && !st.groups[group].warmed[endpoint];
                Pick::Job { job, endpoint, slot, warms }
            }
            None => {
                // Due retries later, or others still running: wait for news.
                let next_retry = st.retry.iter().map(|r| r.not_before).min();
                let wait = next_retry.map_or(Duration::from_millis(200), |t| {
                    t.saturating_duration_since(now)
                        .clamp(Duration::from_millis(1), Duration::from_millis(200))
                });
                Pick::Wait(wait)
            }
        }
    }

    fn give_up_all(&self, st: &mut State, now: Instant, why: &str) {
        for i in 0..st.results.len() {
            if st.results[i].is_none() {
                st.results[i] = Some(JobResult { outcome: Err(why.into()), started: now, finished: now });
            }
        }
        st.retry.clear();
        st.remaining = 0;
        self.wake.notify_all();
    }

    fn release(&self, st: &mut State, lane: usize) {
        if let Some(run) = st.lanes[lane].run.take() {
            if run.next < run.end {
                st.groups[run.group].unassigned.push((run.next, run.end));
            }
        }
    }

    /// A due retry this endpoint may take: not the endpoint that failed it,
    /// unless it is the only one up.
    fn take_retry(&self, st: &mut State, lane: usize, now: Instant, up: &[bool]) -> Option<usize> {
        let endpoint = st.lanes[lane].endpoint;
        let others_up = up.iter().enumerate().filter(|&(i, &u)| u && i != endpoint).count();
        let cached = st.lanes[lane].cached_group;
        let mut best: Option<usize> = None;
        for (i, r) in st.retry.iter().enumerate() {
            if r.not_before > now || (r.last_endpoint == endpoint && others_up > 0) {
                continue;
            }
            let same = Some(self.jobs[r.job].group) == cached;
            if best.is_none() || same {
                best = Some(i);
                if same {
                    break;
                }
            }
        }
        best.map(|i| st.retry.swap_remove(i).job)
    }

    fn pick_round_robin(
        &self,
        st: &mut State,
        lane: usize,
        now: Instant,
        up: &[bool],
    ) -> Option<(usize, bool)> {
        // In round-robin mode a lane is a thread of the pool, not a slot: it
        // sends job i to endpoint i mod n (the next one up).
        let n = self.endpoints.len();
        let job = match self.take_retry_any(st, now) {
            Some(j) => j,
            None => {
                let &job = st.rr_order.get(st.rr_next)?;
                st.rr_next += 1;
                job
            }
        };
        // Each document's pool sends its chunk k to server k mod n.
        let k = self.groups[self.jobs[job].group].jobs.iter().position(|&j| j == job).unwrap_or(job);
        let start = (k + st.attempts[job] as usize) % n;
        let endpoint = (0..n).map(|k| (start + k) % n).find(|&e| up[e]).unwrap_or(start);
        st.lanes[lane].endpoint = endpoint;
        Some((job, true))
    }

    fn take_retry_any(&self, st: &mut State, now: Instant) -> Option<usize> {
        let i = st.retry.iter().position(|r| r.not_before <= now)?;
        Some(st.retry.swap_remove(i).job)
    }

    fn pick_affine(
        &self,
        st: &mut State,
        lane: usize,
        now: Instant,
        up: &[bool],
        health: &[Health],
    ) -> Option<(usize, bool)> {
        let endpoint = st.lanes[lane].endpoint;
        // 1. A retry that is due.
        if let Some(job) = self.take_retry(st, lane, now, up) {
            let cold = st.lanes[lane].cached_group != Some(self.jobs[job].group);
            return Some((job, cold));
        }
        // 2. The next chunk of this lane's run.
        let cached_group = st.lanes[lane].cached_group;
        let shared = self.endpoints[endpoint].shared_prefix_cache;
        if let Some(run) = &mut st.lanes[lane].run {
            let g = &st.groups[run.group];
            if shared && run.next < run.end && !g.warmed[endpoint] && g.warming[endpoint] {
                // The server's shared cache is being warmed with this
                // document's prefix: start once it is.
                return None;
            }
            if run.next < run.end {
                let job = self.groups[run.group].jobs[run.next];
                run.next += 1;
                return Some((job, cached_group != Some(run.group)));
            }
            st.lanes[lane].run = None;
        }
        // 3. Work handed back (an endpoint went down), then an untouched group.
        let cached = st.lanes[lane].cached_group;
        let handed_back = (0..self.groups.len())
            .filter(|&g| st.groups[g].started && !st.groups[g].unassigned.is_empty())
            .max_by_key(|&g| {
                (Some(g) == cached, st.groups[g].unassigned.iter().map(|r| r.1 - r.0).sum::<usize>())
            });
        let fresh = || {
            (0..self.groups.len())
                .filter(|&g| !st.groups[g].started && !st.groups[g].unassigned.is_empty())
                .max_by_key(|&g| (self.groups[g].jobs.len(), std::cmp::Reverse(g)))
        };
        let take_fresh = fresh().filter(|_| {
            // Spread documents over servers: leave an untouched document to
            // an idle lane of a server holding fewer documents, if there is one.
            let active = |e: usize| {
                let mut gs: Vec<usize> = st
                    .lanes
                    .iter()
                    .filter(|l| l.endpoint == e)
                    .filter_map(|l| l.run.as_ref().map(|r| r.group))
                    .collect();
                gs.sort_unstable();
                gs.dedup();
                gs.len()
            };
            let mine = active(endpoint);
            !st.lanes
                .iter()
                .any(|l| !l.busy && l.run.is_none() && up[l.endpoint] && active(l.endpoint) < mine)
        });
        if let Some(g) = handed_back.or(take_fresh) {
            let (a, mut b) = st.groups[g].unassigned.pop().unwrap_or((0, 0));
            if a < b {
                if !st.groups[g].started {
                    b = self.fan_out(st, lane, g, a, b, health);
                }
                st.lanes[lane].run = Some(Run { group: g, next: a + 1, end: b });
                let job = self.groups[g].jobs[a];
                return Some((job, st.lanes[lane].cached_group != Some(g)));
            }
        }
        // 4. Join the longest run of another lane when that finishes sooner.
        if let Some(job) = self.steal(st, lane, health) {
            return Some(job);
        }
        // 5. Nothing worth doing now; an untouched group left to an idle
        // server's lane is taken if that lane did not take it.
        None
    }

    /// Plans a fresh group: how many idle lanes finish `a..b` soonest, each
    /// evaluating the prefix once (on a server that shares its prefix cache,
    /// once per server) and then a contiguous run. Gives the other lanes
    /// their runs and returns the end of this lane's run. Lanes are taken
    /// one per server first where each slot has its own cache (prefills run
    /// in parallel on different GPUs), on the same server first where the
    /// cache is shared; a group takes at most its fair share of the lanes.
    fn fan_out(&self, st: &mut State, lane: usize, g: usize, a: usize, b: usize, health: &[Health]) -> usize {
        let n = b - a;
        let endpoint = st.lanes[lane].endpoint;
        let h = if health[endpoint].samples > 0 {
            &health[endpoint]
        } else {
            health.iter().max_by_key(|h| h.samples).unwrap_or(&health[endpoint])
        };
        let t = self.job_cost(self.groups[g].jobs[a], h).max(1e-9);
        let prefill = self.groups[g].prefix_tokens as f64 * h.prefill_s;
        let now = Instant::now();
        let up = |e: usize| health[e].down_until.is_none_or(|x| x <= now);
        let shared = self.endpoints[endpoint].shared_prefix_cache;
        let mut idle: Vec<usize> = (0..st.lanes.len())
            .filter(|&l| {
                l != lane && !st.lanes[l].busy && st.lanes[l].run.is_none() && up(st.lanes[l].endpoint)
            })
            .collect();
        let waiting = (0..self.groups.len())
            .filter(|&x| x != g && !st.groups[x].started && !st.groups[x].unassigned.is_empty())
            .count();
        let fair = (st.lanes.len() / (waiting + 1)).max(1);
        if shared {
            let chosen = Self::whole_servers(st, lane, idle, fair.min(n), |lanes| {
                prefill + n as f64 / lanes.max(1) as f64 * t
            });
            return self.deal(st, g, a, b, &chosen);
        }
        // Spread over servers (by slot).
        idle.sort_by_key(|&l| {
            let same = st.lanes[l].endpoint == endpoint;
            (st.lanes[l].slot + same as usize, st.lanes[l].endpoint)
        });
        let mut per_server: std::collections::HashMap<usize, usize> = [(endpoint, 1)].into();
        let estimate = |k: usize, per_server: &std::collections::HashMap<usize, usize>| {
            let prefills = per_server
                .iter()
                .map(|(&e, &m)| if self.endpoints[e].shared_prefix_cache { 1 } else { m })
                .max()
                .unwrap_or(1);
            prefills as f64 * prefill + n.div_ceil(k) as f64 * t
        };
        // The number of lanes (in the order above) that finishes soonest; a
        // larger number only when it saves a twentieth.
        let (mut best, mut k) = (estimate(1, &per_server), 1);
        let candidates: Vec<usize> =
            idle.iter().copied().take(fair.saturating_sub(1)).take(n.saturating_sub(1)).collect();
        for (i, &l) in candidates.iter().enumerate() {
            *per_server.entry(st.lanes[l].endpoint).or_default() += 1;
            let e = estimate(i + 2, &per_server);
            if e < best * 0.95 {
                best = e;
                k = i + 2;
            }
        }
        let chosen: Vec<usize> =
            std::iter::once(lane).chain(candidates.iter().copied().take(k - 1)).collect();
        self.deal(st, g, a, b, &chosen)
    }

    /// Deals `a..b` to `chosen` (this lane first) in contiguous runs of
    /// (nearly) equal length; returns the end of the first lane's run.
    fn deal(&self, st: &mut State, g: usize, a: usize, b: usize, chosen: &[usize]) -> usize {
        let (n, k) = (b - a, chosen.len());
        let bounds: Vec<usize> = (0..=k).map(|i| a + i * n / k).collect();
        for (i, &l) in chosen.iter().enumerate().skip(1) {
            st.lanes[l].run = Some(Run { group: g, next: bounds[i], end: bounds[i + 1] });
        }
        if k > 1 {
            self.wake.notify_all();
        }
        bounds[1]
    }

    /// `fan_out`'s lanes where the servers share one prefix cache across
    /// their slots: every idle lane of a server that takes part costs nothing
    /// more than the server's one prefill (all run at once on different
    /// GPUs), so whole servers are added, this lane's first, then those with
    /// the most idle lanes, while each saves a twentieth of the estimated
    /// time, up to `most` lanes. Server by server, this lane first.
    fn whole_servers(
        st: &State,
        lane: usize,
        idle: Vec<usize>,
        most: usize,
        estimate: impl Fn(usize) -> f64,
    ) -> Vec<usize> {
        let mut servers: Vec<(usize, Vec<usize>)> = vec![(st.lanes[lane].endpoint, vec![lane])];
        for l in idle {
            let e = st.lanes[l].endpoint;
            match servers.iter_mut().find(|(s, _)| *s == e) {
                Some((_, lanes)) => lanes.push(l),
                None => servers.push((e, vec![l])),
            }
        }
        servers[1..].sort_by_key(|(e, lanes)| (std::cmp::Reverse(lanes.len()), *e));
        let mut chosen: Vec<usize> = Vec::new();
        let mut best = f64::INFINITY;
        for (_, lanes) in &servers {
            let room = most.max(1).saturating_sub(chosen.len());
            if room == 0 {
                break;
            }
            let take = &lanes[..lanes.len().min(room)];
            let e = estimate(chosen.len() + take.len());
            if chosen.is_empty() || e < best * 0.95 {
                best = e;
                chosen.extend_from_slice(take);
            }
        }
        chosen
    }

    fn steal(&self, st: &mut State, lane: usize, health: &[Health]) -> Option<(usize, bool)> {
        let endpoint = st.lanes[lane].endpoint;
        let e = &self.endpoints[endpoint];
        // Rates measured on this server, else on the one measured most (the
        // pool's servers are alike); none yet: the first answer comes first.
        let h = if health[endpoint].samples > 0 {
            &health[endpoint]
        } else {
            health.iter().filter(|h| h.samples > 0).max_by_key(|h| h.samples)?
        };
        let prefills_here = st.lanes.iter().filter(|l| l.endpoint == endpoint && l.busy && l.cold).count();
        let mut best: Option<(usize, usize, f64)> = None; // (victim lane, take, gain)
        for (v, l) in st.lanes.iter().enumerate() {
            let Some(run) = &l.run else { continue };
            if v == lane || run.end <= run.next {
                continue;
            }
            let g = run.group;
            let r = (run.end - run.next) as f64;
            let chunk_cost = self.job_cost(self.groups[g].jobs[run.next], h);
            let free = e.shared_prefix_cache && st.groups[g].warmed[endpoint];
            if free && l.busy {
                // This server holds the prefix already: the other lane's
                // next chunks wait for its request in flight, this lane can
                // start the last of them now, at no cost. Half of them, on
                // the same terms.
                let x = (r / 2.0).ceil();
                let gain = x * chunk_cost;
                if best.is_none_or(|b| gain > b.2) {
                    best = Some((v, x as usize, gain));
                }
                continue;
            }
            if run.end <= run.next + 1 {
                continue;
            }
            let prefix_cost = if free {
                0.0
            } else if e.shared_prefix_cache && st.groups[g].warming[endpoint] {
                // Its first request is warming this server's cache: wait for it.
                continue;
            } else {
                self.groups[g].prefix_tokens as f64 * h.prefill_s * (1 + prefills_here) as f64
            };
            let x = ((r * chunk_cost - prefix_cost) / (2.0 * chunk_cost)).floor();
            if x >= 1.0 {
                let gain = r * chunk_cost - (prefix_cost + x * chunk_cost).max((r - x) * chunk_cost);
                // Only a split that saves a fifth of the run's time is worth
                // a second copy of the prefix (the cost model is rough, and
                // slots of one server share its compute).
                if gain < 0.2 * r * chunk_cost {
                    continue;
                }
                if best.is_none_or(|b| gain > b.2) {
                    best = Some((v, x as usize, gain));
                }
            }
        }
        let (v, take, _) = best?;
        let run = st.lanes[v].run.as_mut()?;
        let group = run.group;
        let start = run.end - take;
        run.end = start;
        st.lanes[lane].run = Some(Run { group, next: start + 1, end: start + take });
        let job = self.groups[group].jobs[start];
        Some((job, st.lanes[lane].cached_group != Some(group)))
    }

    /// Estimated seconds for one request after the prefix is cached.
    fn job_cost(&self, job: usize, h: &Health) -> f64 {
        self.jobs[job].suffix_tokens as f64 * h.prefill_s + h.answer_tokens * h.decode_s
    }
}

/// Updates an endpoint's rates from one answer.
fn learn(h: &mut Health, c: &Completion) {
    // The first measurement replaces the guesses; later ones are averaged.
    let a = if h.samples == 0 { 1.0 } else { 0.2 };
    h.samples += 1;
    if let (Some(ms), Some(n)) = (c.prompt_ms, c.evaluated_tokens) {
        if n > 16 && ms > 0.0 {
            h.prefill_s = (1.0 - a) * h.prefill_s + a * (ms / 1e3 / n as f64);
        }
    }
    if let (Some(ms), Some(n)) = (c.decode_ms, c.completion_tokens) {
        if n > 0 && ms > 0.0 {
            h.decode_s = (1.0 - a) * h.decode_s + a * (ms / 1e3 / n as f64);
        }
    }
    if let Some(n) = c.completion_tokens {
        h.answer_tokens = (1.0 - a) * h.answer_tokens + a * n as f64;
    }
}
