//! `famix serve`: an HTTP segmentation service with a web page.
//!
//! Requests are decoded (and checked: body size, format, pixel count from the header
//! before decoding) on tokio's blocking pool, queued on a bounded channel, and batched
//! by one model thread: same-size images with the same test-time options go through
//! one forward pass, up to `--max-batch`, waiting at most `--batch-wait-ms` for
//! company. A full queue answers 503 with `Retry-After`; a failing request never
//! affects the others in its batch (sizes are checked per image, and a panic in a
//! forward pass is caught and answered as an error). SIGTERM/Ctrl-C stop accepting
//! connections and finish the requests in flight. The probes (`/healthz`, `/readyz`,
//! `/v1/health`) never touch the model thread. Connection limits (header and idle
//! timeouts, the connection budget per process and per client address, the overflow
//! path that keeps answering probes during a flood) live in `serve_net`, the API key
//! in `serve_auth`.

use std::io::Cursor;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use clap::Args;
use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender, TrySendError};
use serde::Deserialize;
use serde_json::json;
use tch::{Device, Kind, Tensor};

use famix::render::{colorize, overlay};
use famix::{Image8, Precision, PredictOptions, Segmenter};

#[derive(Args)]
pub struct ServeArgs {
    /// famix checkpoint or reference FAMix .pth
    #[arg(long)]
    checkpoint: PathBuf,
    #[command(flatten)]
    classes: super::ModelClassesArgs,
    /// Address to bind (loopback unless told otherwise)
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port (0: any free port; the address is printed)
    #[arg(long, default_value_t = 8080)]
    port: u16,
    #[command(flatten)]
    device: super::DeviceArgs,
    /// bf16 autocast for the forward passes
    #[arg(long, value_parser = super::choice::<Precision>(), default_value = "fp32")]
    amp: Precision,
    /// Serve the plain network (conv then batch norm) instead of the fast path (folded batch norms, channels-last)
    #[arg(long, alias = "no-fuse")]
    no_fold: bool,
    #[command(flatten)]
    engine: super::EngineArgs,
    /// Most images per forward pass (same size and options)
    #[arg(long, default_value_t = 8)]
    max_batch: usize,
    /// Most requests waiting for the model; more are answered 503
    #[arg(long, default_value_t = 64)]
    max_queue: usize,
    /// Most pixels per image (checked from the header, before decoding); more: 413
    #[arg(long, default_value_t = 16_777_216)]
    max_pixels: u64,
    /// Most request body size in MiB; more: 413
    #[arg(long, default_value_t = 32)]
    max_body_mb: usize,
    /// How long a forward pass waits for more same-size requests (ms)
    #[arg(long, default_value_t = 5)]
    batch_wait_ms: u64,
    /// Seconds a connection has to send complete request headers (after connecting or after its previous response); slower ones are closed
    #[arg(long, default_value_t = 10)]
    header_timeout: u64,
    /// Seconds a kept-alive connection may sit idle (no request in flight, no bytes) before it is closed
    #[arg(long, default_value_t = 60)]
    idle_timeout: u64,
    /// Most connections served at once (cut to what the open-file limit allows, which famix raises to its hard limit); beyond it, and beyond --max-connections-per-client, /healthz and /readyz are still answered and other requests get 503
    #[arg(long, default_value_t = 8192)]
    max_connections: usize,
    /// Most connections served at once from one client address
    #[arg(long, default_value_t = 256)]
    max_connections_per_client: usize,
    /// File holding the API key clients must send as `Authorization: Bearer <key>` (or set FAMIX_API_KEY); required when --host is not a loopback address
    #[arg(long, value_name = "FILE")]
    api_key_file: Option<PathBuf>,
    /// Serve beyond loopback without authentication (anyone who reaches the port can use the model)
    #[arg(long)]
    no_auth: bool,
}

/// One image waiting for the model.
struct Job {
    image: Image8,
    scale: f64,
    ensemble: bool,
    reply: tokio::sync::oneshot::Sender<std::result::Result<Image8, String>>,
}

/// Prometheus metrics of the service.
struct Metrics {
    registry: prometheus::Registry,
    requests: prometheus::IntCounterVec,
    errors: prometheus::IntCounterVec,
    queue_depth: prometheus::IntGauge,
    latency: prometheus::Histogram,
    images: prometheus::IntCounter,
    images_per_s: prometheus::Gauge,
    connections: prometheus::IntGaugeVec,
}

impl Metrics {
    fn new() -> Result<Self> {
        use prometheus::{Gauge, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts};
        let m = Metrics {
            registry: prometheus::Registry::new(),
            requests: IntCounterVec::new(Opts::new("famix_requests_total", "HTTP requests by endpoint"), &["endpoint"])?,
            errors: IntCounterVec::new(Opts::new("famix_errors_total", "Failed requests by kind"), &["kind"])?,
            queue_depth: IntGauge::new("famix_queue_depth", "Requests waiting for the model")?,
            latency: Histogram::with_opts(
                HistogramOpts::new("famix_request_latency_seconds", "Time to answer /v1/segment")
                    .buckets(vec![0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]),
            )?,
            images: IntCounter::new("famix_images_total", "Images segmented")?,
            images_per_s: Gauge::new("famix_images_per_second", "Throughput of the last forward passes (smoothed)")?,
            connections: IntGaugeVec::new(
                Opts::new("famix_connections", "Connections served now (open), sent to the overflow path since start (overflowed), closed at once since start (dropped)"),
                &["state"],
            )?,
        };
        m.registry.register(Box::new(m.requests.clone()))?;
        m.registry.register(Box::new(m.errors.clone()))?;
        m.registry.register(Box::new(m.queue_depth.clone()))?;
        m.registry.register(Box::new(m.latency.clone()))?;
        m.registry.register(Box::new(m.images.clone()))?;
        m.registry.register(Box::new(m.images_per_s.clone()))?;
        m.registry.register(Box::new(m.connections.clone()))?;
        Ok(m)
    }
}

/// What the handlers share.
struct App {
    jobs: Sender<Job>,
    max_queue: usize,
    metrics: Arc<Metrics>,
    net: Arc<super::serve_net::NetStats>,
    max_pixels: u64,
    class_names: Vec<String>,
    palette: Vec<[u8; 3]>,
    health: serde_json::Value,
    sample_png: Vec<u8>,
}

/// An error answer: status, kind (for metrics) and message (JSON body).
struct ApiError(StatusCode, &'static str, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (self.0, Json(json!({"error": self.2, "kind": self.1}))).into_response();
        if self.0 == StatusCode::SERVICE_UNAVAILABLE {
            r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        r
    }
}

#[derive(Deserialize)]
struct SegmentQuery {
    output: Option<String>,
    scale: Option<f64>,
    ensemble: Option<bool>,
}

/// Checks the bytes' format and declared size from the header, then decodes strictly.
fn decode(bytes: &[u8], max_pixels: u64) -> std::result::Result<Image8, ApiError> {
    let format = image::guess_format(bytes)
        .map_err(|_| ApiError(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported", "the body is not a PNG, JPEG or WebP image".into()))?;
    if !matches!(format, image::ImageFormat::Png | image::ImageFormat::Jpeg | image::ImageFormat::WebP) {
        return Err(ApiError(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported",
            format!("{format:?} images are not accepted (PNG, JPEG, WebP)"),
        ));
    }
    let (w, h) = match format {
        // A PNG's size is in its first chunk (IHDR): read it without the decoder, which
        // wants more of the file first.
        image::ImageFormat::Png if bytes.len() >= 24 && &bytes[12..16] == b"IHDR" => (
            u32::from_be_bytes([bytes[16], bytes[17], bytes[18], bytes[19]]),
            u32::from_be_bytes([bytes[20], bytes[21], bytes[22], bytes[23]]),
        ),
        _ => image::ImageReader::with_format(Cursor::new(bytes), format)
            .into_dimensions()
            .map_err(|e| ApiError(StatusCode::BAD_REQUEST, "corrupt", format!("unreadable image header: {e}")))?,
    };
    if w as u64 * h as u64 > max_pixels {
        return Err(ApiError(StatusCode::PAYLOAD_TOO_LARGE, "too_many_pixels", format!("{w}x{h} is more than --max-pixels {max_pixels}")));
    }
    Image8::decode_rgb(bytes).map_err(|e| ApiError(StatusCode::BAD_REQUEST, "corrupt", format!("corrupt image: {e:#}")))
}

/// The answer in the requested form.
fn encode(output: &str, image: &Image8, ids: &Image8, app: &App, elapsed_ms: f64) -> std::result::Result<Response, ApiError> {
    let png = |img: &Image8| {
        img.to_png()
            .map(|b| ([(header::CONTENT_TYPE, "image/png")], b).into_response())
            .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, "encode", format!("cannot encode the answer: {e}")))
    };
    match output {
        "trainid" => png(ids),
        "color" => png(&colorize(ids, &app.palette)),
        "overlay" => png(&overlay(image, &colorize(ids, &app.palette))),
        _ => {
            let mut counts = vec![0u64; 256];
            for &c in &ids.data {
                counts[c as usize] += 1;
            }
            let total = ids.data.len().max(1) as f64;
            let classes: Vec<serde_json::Value> = counts
                .iter()
                .enumerate()
                .filter(|(_, n)| **n > 0)
                .map(|(id, n)| {
                    let name = app.class_names.get(id).cloned().unwrap_or_else(|| "ignore".into());
                    json!({"id": id, "name": name, "pixels": n, "fraction": *n as f64 / total})
                })
                .collect();
            Ok(Json(json!({"width": ids.width, "height": ids.height, "classes": classes, "elapsed_ms": elapsed_ms})).into_response())
        }
    }
}

async fn segment(State(app): State<Arc<App>>, Query(q): Query<SegmentQuery>, body: Bytes) -> Response {
    let t0 = Instant::now();
    app.metrics.requests.with_label_values(&["segment"]).inc();
    let res = segment_inner(&app, q, body, t0).await;
    app.metrics.latency.observe(t0.elapsed().as_secs_f64());
    match res {
        Ok(r) => r,
        Err(e) => {
            app.metrics.errors.with_label_values(&[e.1]).inc();
            e.into_response()
        }
    }
}

async fn segment_inner(app: &Arc<App>, q: SegmentQuery, body: Bytes, t0: Instant) -> std::result::Result<Response, ApiError> {
    let output = q.output.unwrap_or_else(|| "json".into());
    if !["trainid", "color", "overlay", "json"].contains(&output.as_str()) {
        return Err(ApiError(StatusCode::BAD_REQUEST, "bad_request", format!("unknown output {output:?} (trainid, color, overlay, json)")));
    }
    let opts = PredictOptions { scale: q.scale.unwrap_or(1.0), ensemble: q.ensemble.unwrap_or(false), ..Default::default() };
    opts.validate().map_err(|e| ApiError(StatusCode::BAD_REQUEST, "bad_request", e.to_string()))?;
    let max_pixels = app.max_pixels;
    let image = tokio::task::spawn_blocking(move || decode(&body, max_pixels))
        .await
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))??;
    let (tx, rx) = tokio::sync::oneshot::channel();
    let job = Job { image: image.clone(), scale: opts.scale, ensemble: opts.ensemble, reply: tx };
    match app.jobs.try_send(job) {
        Ok(()) => {}
        Err(TrySendError::Full(_)) => {
            return Err(ApiError(StatusCode::SERVICE_UNAVAILABLE, "queue_full", "the queue is full; retry shortly".into()))
        }
        Err(TrySendError::Disconnected(_)) => {
            return Err(ApiError(StatusCode::SERVICE_UNAVAILABLE, "shutting_down", "the model has stopped".into()))
        }
    }
    app.metrics.queue_depth.set(app.jobs.len() as i64);
    let ids = rx
        .await
        .map_err(|_| ApiError(StatusCode::INTERNAL_SERVER_ERROR, "internal", "the model dropped the request".into()))?
        .map_err(|e| ApiError(StatusCode::UNPROCESSABLE_ENTITY, "model", e))?;
    let app2 = app.clone();
    tokio::task::spawn_blocking(move || encode(&output, &image, &ids, &app2, t0.elapsed().as_secs_f64() * 1e3))
        .await
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?
}

/// The model thread: batches queued jobs and answers each.
fn model_loop(model: Segmenter, jobs: Receiver<Job>, precision: Precision, max_batch: usize, wait: Duration, metrics: Arc<Metrics>) {
    let mut deferred: std::collections::VecDeque<Job> = Default::default();
    loop {
        let first = match deferred.pop_front() {
            Some(j) => j,
            None => match jobs.recv() {
                Ok(j) => j,
                Err(_) => return, // all senders gone: shutting down
            },
        };
        let key = |j: &Job| (j.image.width, j.image.height, j.scale.to_bits(), j.ensemble);
        let mut batch = vec![first];
        let deadline = Instant::now() + wait;
        while batch.len() < max_batch.max(1) {
            let next = match deferred.iter().position(|j| key(j) == key(&batch[0])) {
                Some(i) => deferred.remove(i),
                None => match jobs.recv_deadline(deadline) {
                    Ok(j) => Some(j),
                    Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => None,
                },
            };
            match next {
                Some(j) if key(&j) == key(&batch[0]) => batch.push(j),
                Some(j) => deferred.push_back(j),
                None => break,
            }
        }
        metrics.queue_depth.set(jobs.len() as i64 + deferred.len() as i64);
        run_batch(&model, batch, precision, &metrics);
    }
}

/// One forward pass for same-size jobs; each job gets its own answer.
fn run_batch(model: &Segmenter, batch: Vec<Job>, precision: Precision, metrics: &Metrics) {
    let t = Instant::now();
    let mut ok = Vec::with_capacity(batch.len());
    for j in batch {
        match model.check_size(j.image.width as i64, j.image.height as i64, j.scale) {
            Ok(()) => ok.push(j),
            Err(e) => drop(j.reply.send(Err(e.to_string()))),
        }
    }
    if ok.is_empty() {
        return;
    }
    let opts = PredictOptions { scale: ok[0].scale, ensemble: ok[0].ensemble, precision, keep_logits: false };
    let forward = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| -> famix::Result<Tensor> {
        let x = Tensor::stack(&ok.iter().map(|j| j.image.to_tensor_u8()).collect::<Vec<_>>(), 0);
        let (ids, _) = model.predict_ids(&x, &opts)?;
        Ok(ids.to_kind(Kind::Uint8).to_device(Device::Cpu))
    }));
    let n = ok.len();
    match forward {
        Ok(Ok(ids)) => {
            for (k, j) in ok.into_iter().enumerate() {
                let r = Image8::from_tensor_u8(&ids.get(k as i64)).map_err(|e| e.to_string());
                let _ = j.reply.send(r);
            }
            metrics.images.inc_by(n as u64);
            let rate = n as f64 / t.elapsed().as_secs_f64().max(1e-9);
            let old = metrics.images_per_s.get();
            metrics.images_per_s.set(if old == 0.0 { rate } else { 0.8 * old + 0.2 * rate });
        }
        Ok(Err(e)) => ok.into_iter().for_each(|j| drop(j.reply.send(Err(format!("{e}"))))),
        Err(_) => ok.into_iter().for_each(|j| drop(j.reply.send(Err("internal error in the forward pass".into())))),
    }
}

/// The probes' answers (status, JSON): `/healthz` (the process answers), `/readyz`
/// (the model queue has room: 200, else 503) and `/v1/health` (what is served). Cheap
/// and independent of the model thread, so they answer during floods and full queues;
/// the overflow path of `serve_net` uses them too.
fn probe(app: &App, path: &str) -> Option<(u16, String)> {
    match path {
        "/healthz" => Some((200, json!({"status": "ok"}).to_string())),
        "/readyz" => {
            let queued = app.jobs.len();
            let ready = queued < app.max_queue;
            Some((if ready { 200 } else { 503 }, json!({"ready": ready, "queued": queued, "max_queue": app.max_queue}).to_string()))
        }
        "/v1/health" => Some((200, app.health.to_string())),
        _ => None,
    }
}

async fn probe_route(State(app): State<Arc<App>>, uri: axum::http::Uri) -> Response {
    app.metrics.requests.with_label_values(&["health"]).inc();
    match probe(&app, uri.path()) {
        Some((code, body)) => {
            (StatusCode::from_u16(code).unwrap_or(StatusCode::OK), [(header::CONTENT_TYPE, "application/json")], body).into_response()
        }
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn classes(State(app): State<Arc<App>>) -> Response {
    app.metrics.requests.with_label_values(&["classes"]).inc();
    let list: Vec<serde_json::Value> =
        app.class_names.iter().zip(&app.palette).enumerate().map(|(i, (n, c))| json!({"id": i, "name": n, "color": c})).collect();
    Json(json!({"classes": list})).into_response()
}

async fn metrics(State(app): State<Arc<App>>) -> Response {
    use prometheus::Encoder;
    app.metrics.queue_depth.set(app.jobs.len() as i64);
    let net = &app.net;
    for (state, v) in [
        ("open", net.open.load(Ordering::Relaxed) as i64),
        ("overflowed", net.overflowed.load(Ordering::Relaxed) as i64),
        ("dropped", net.dropped.load(Ordering::Relaxed) as i64),
    ] {
        app.metrics.connections.with_label_values(&[state]).set(v);
    }
    let mut buf = Vec::new();
    let enc = prometheus::TextEncoder::new();
    match enc.encode(&app.metrics.registry.gather(), &mut buf) {
        Ok(()) => ([(header::CONTENT_TYPE, enc.format_type().to_string())], buf).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

async fn page() -> Response {
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], include_str!("serve_page.html")).into_response()
}

async fn sample(State(app): State<Arc<App>>) -> Response {
    ([(header::CONTENT_TYPE, "image/png")], app.sample_png.clone()).into_response()
}

/// A built-in street scene (the procedural world's day look), so the page works with
/// no file at hand.
fn sample_png() -> Result<Vec<u8>> {
    use famix_synth::{scene_image, Condition, SynthSize};
    let mut layout = famix::rng::Rng::derive(1, &[famix::rng::stream::SYNTH_LAYOUT, 999]);
    let mut render = famix::rng::Rng::derive(1, &[famix::rng::stream::SYNTH_RENDER, 999]);
    let (img, _) = scene_image(&mut layout, &mut render, SynthSize { width: 512, height: 256 }, Condition::Day);
    Ok(img.to_png()?)
}

async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term => {},
    }
    eprintln!("famix serve: shutting down (finishing requests in flight)");
}

/// The routes: the page and the probes open, everything that uses the model behind the
/// API key when there is one.
fn router(app: Arc<App>, key: Option<super::serve_auth::ApiKey>, max_body: usize) -> Router {
    let protected = Router::new()
        .route("/v1/segment", post(segment))
        .route("/v1/classes", get(classes))
        .route("/v1/sample.png", get(sample))
        .route("/metrics", get(metrics));
    let protected = match key {
        Some(k) => protected.route_layer(axum::middleware::from_fn_with_state(Arc::new(k), super::serve_auth::require_key)),
        None => protected,
    };
    Router::new()
        .route("/", get(page))
        .route("/v1/health", get(probe_route))
        .route("/healthz", get(probe_route))
        .route("/readyz", get(probe_route))
        .merge(protected)
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(app)
}

pub fn serve(a: ServeArgs) -> Result<i32> {
    let key = super::serve_auth::resolve(&a.host, a.api_key_file.as_ref(), a.no_auth)?;
    for (name, v) in [
        ("--header-timeout", a.header_timeout),
        ("--idle-timeout", a.idle_timeout),
        ("--max-connections", a.max_connections as u64),
        ("--max-connections-per-client", a.max_connections_per_client as u64),
    ] {
        if v == 0 {
            anyhow::bail!("{name} must be at least 1");
        }
    }
    let loaded = famix::model::checkpoint::load(&a.checkpoint, a.device.device, None)?;
    a.classes.resolve(&loaded.model, &loaded.path)?;
    let mut model = loaded.model;
    if !a.no_fold {
        model.fold();
    }
    famix::device::tune_for_repeated_sizes(model.device());
    let engine = a.engine.attach(&mut model, a.amp, famix::engine::Engine::Auto)?;
    let (tx, rx) = bounded::<Job>(a.max_queue.max(1));
    let fds = super::serve_net::raise_fd_limit();
    let max_connections = super::serve_net::connection_budget(a.max_connections, fds);
    if max_connections < a.max_connections {
        eprintln!("famix serve: serving at most {max_connections} connections (the open-file limit is {fds})");
    }
    let app = Arc::new(App {
        jobs: tx,
        max_queue: a.max_queue.max(1),
        metrics: Arc::new(Metrics::new()?),
        net: Default::default(),
        max_pixels: a.max_pixels,
        class_names: model.config().class_names(),
        palette: model.config().palette(),
        health: json!({
            "ready": true, "device": famix::device::device_name(a.device.device), "precision": a.amp.name(), "engine": engine,
            "checkpoint": loaded.path.display().to_string(), "checkpoint_sha256": famix::io::sha256_file(&loaded.path)?,
            "classes": model.config().class_names().len(), "max_batch": a.max_batch, "auth": key.is_some(),
        }),
        sample_png: sample_png()?,
    });
    let worker_metrics = app.metrics.clone();
    let (precision, max_batch, wait) = (a.amp, a.max_batch, Duration::from_millis(a.batch_wait_ms));
    let worker = std::thread::Builder::new()
        .name("famix-model".into())
        .spawn(move || model_loop(model, rx, precision, max_batch, wait, worker_metrics))?;
    let auth = key.is_some();
    let router = router(app.clone(), key, a.max_body_mb.saturating_mul(1 << 20));
    let limits = super::serve_net::NetLimits {
        header_timeout: Duration::from_secs(a.header_timeout),
        idle_timeout: Duration::from_secs(a.idle_timeout),
        max_connections,
        max_per_client: a.max_connections_per_client,
    };
    // The overflow path reaches the app weakly: it must not keep the model's queue open
    // after the server has stopped.
    let weak = Arc::downgrade(&app);
    let probe_fn: super::serve_net::Probe = Arc::new(move |path| weak.upgrade().and_then(|app| probe(&app, path)));
    let net = app.net.clone();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async {
        let host = if a.host.eq_ignore_ascii_case("localhost") { "127.0.0.1" } else { a.host.as_str() };
        let addr: SocketAddr = format!("{host}:{}", a.port)
            .parse()
            .or_else(|_| format!("[{host}]:{}", a.port).parse())
            .with_context(|| format!("--host {} --port {}: not an address", a.host, a.port))?;
        let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr}"))?;
        eprintln!("famix serve: listening on http://{}{}", listener.local_addr()?, if auth { " (API key required)" } else { "" });
        super::serve_net::serve(listener, router, limits, probe_fn, net, shutdown_signal()).await;
        anyhow::Ok(())
    })?;
    drop(app);
    let _ = worker.join();
    Ok(0)
}
