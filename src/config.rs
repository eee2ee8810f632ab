//! Every server setting: its flag, its `MSGBUS_*` environment variable, its
//! default and why that default. Flags win over variables.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use crate::store::StoreConfig;

/// Settings of `msgbus serve`.
#[derive(Debug, Clone, Args)]
pub struct ServeConfig {
    /// Address to listen on. Use `0.0.0.0:8080` in a container; port 0
    /// picks a free port (tests do this).
    #[arg(long, env = "MSGBUS_ADDR", default_value = "127.0.0.1:8080")]
    pub addr: SocketAddr,

    /// Data directory: segments, manifest, backups, quarantine, and the LOCK
    /// that keeps a second instance out. Created if missing.
    #[arg(long, env = "MSGBUS_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,

    /// Seal the active segment and start a new one once it reaches this size.
    /// Larger segments mean fewer files; smaller ones mean finer-grained
    /// retention and backup. Accepts `64MiB`, `512KiB`, `1000000`.
    #[arg(long, env = "MSGBUS_SEGMENT_BYTES", default_value = "64MiB", value_parser = parse_bytes)]
    pub segment_bytes: u64,

    /// Largest event accepted, measured as the stored JSON. Larger ones get 413.
    #[arg(long, env = "MSGBUS_MAX_EVENT_BYTES", default_value = "1MiB", value_parser = parse_bytes)]
    pub max_event_bytes: u64,

    /// Most events in one `POST /events/batch`.
    #[arg(long, env = "MSGBUS_MAX_BATCH_EVENTS", default_value_t = 1000)]
    pub max_batch_events: usize,

    /// Largest request body of `POST /events/batch`.
    #[arg(long, env = "MSGBUS_MAX_BATCH_BYTES", default_value = "16MiB", value_parser = parse_bytes)]
    pub max_batch_bytes: u64,

    /// Request bodies all requests in flight may hold together (declared
    /// lengths up front, bodies without one as they arrive). Beyond it a
    /// request answers 503 with `Retry-After` instead of adding to memory:
    /// a larger budget lets more large batches be received at once, a
    /// smaller one bounds the server's memory under a flood of bodies.
    #[arg(long, env = "MSGBUS_MAX_BODY_BYTES_IN_FLIGHT", default_value = "256MiB", value_parser = parse_bytes)]
    pub max_body_bytes_in_flight: u64,

    /// When requests need a token: `auto` (the default) requires one as
    /// soon as a token exists (`msgbus token create`) or
    /// `MSGBUS_ADMIN_TOKEN` is set; with neither, the server is open on a
    /// loopback address and refuses to start on any other. `required`
    /// always needs one; `off` never does (anyone who reaches the port may
    /// do everything). `/health/*` never needs one.
    ///
    /// `MSGBUS_ADMIN_TOKEN` (environment only, at least 32 characters) is
    /// an admin secret for containers: set it and the bus starts with
    /// access control on; use it to create the real tokens.
    #[arg(long, env = "MSGBUS_AUTH", value_enum, default_value_t = AuthMode::Auto)]
    pub auth: AuthMode,

    /// Open routes that need a token (the read role) anyway: `metrics`
    /// (`/metrics`), `docs` (`/docs`, `/openapi.json`); comma-separated.
    /// By default both are open, like the health probes.
    #[arg(long, env = "MSGBUS_PROTECT", value_enum, value_delimiter = ',')]
    pub protect: Vec<ProtectRoute>,

    /// Failed authentications allowed per client address (loopback
    /// included), as `N/m` or `N/s`, with a burst of a minute's worth;
    /// beyond it they are answered 429 with `Retry-After`.
    #[arg(long, env = "MSGBUS_AUTH_FAILURE_RATE", default_value = "30/m", value_parser = Rate::parse)]
    pub auth_failure_rate: Rate,

    /// Most streams (`GET /events/stream`) and long-polls open at once
    /// per token; beyond it, 429. Keeps one agent from holding every
    /// `--max-subscribers` place.
    #[arg(long, env = "MSGBUS_MAX_STREAMS_PER_TOKEN", default_value_t = 64)]
    pub max_streams_per_token: usize,

    /// Browser origins (e.g. `https://dash.example.com`) allowed to call the
    /// API from their pages, with CORS answers; repeat the flag or separate
    /// them with commas. By default none: a browser request from any other
    /// origin than the server's own (by `Origin` or `Sec-Fetch-Site:
    /// cross-site`/`same-site`) is refused with 403, so no web page can
    /// publish, ack or trigger admin work. Non-browser clients are unaffected.
    #[arg(long, env = "MSGBUS_CORS_ALLOW_ORIGIN", value_delimiter = ',')]
    pub cors_allow_origin: Vec<String>,

    /// Commands the writer's queue holds before publishers get 503 with
    /// `Retry-After`. Bounds memory under overload instead of queueing forever.
    #[arg(long, env = "MSGBUS_QUEUE_CAPACITY", default_value_t = 4096)]
    pub queue_capacity: usize,

    /// Memory for the newest events' bytes, so readers following the tail
    /// never touch the disk.
    #[arg(long, env = "MSGBUS_READ_CACHE_BYTES", default_value = "64MiB", value_parser = parse_bytes)]
    pub read_cache_bytes: u64,

    /// Idempotency keys the sealed segments' key filter has room for beyond
    /// the events it holds and an eighth more (2 bytes of memory each).
    /// When it fills up it is rebuilt larger, on a thread of its own, from
    /// the sealed segments' key tables (about 16 bytes read per sealed
    /// event); more headroom means rarer rebuilds for a fast-growing store.
    #[arg(long, env = "MSGBUS_KEY_FILTER_HEADROOM", default_value_t = crate::store::keyfilter::DEFAULT_HEADROOM)]
    pub key_filter_headroom: u64,

    /// Longest long-poll a client may ask for with `wait=` (seconds).
    #[arg(long, env = "MSGBUS_MAX_WAIT", default_value = "60s", value_parser = parse_duration)]
    pub max_wait: Duration,

    /// Requests (other than long-polls, which end after `wait`) taking longer
    /// than this are answered 503.
    #[arg(long, env = "MSGBUS_REQUEST_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub request_timeout: Duration,

    /// A client that takes longer than this to send a request body gets
    /// 408 (its slowness is not a server error). Capped at 90% of
    /// --request-timeout, which would otherwise answer first, with 503.
    #[arg(long, env = "MSGBUS_BODY_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub body_timeout: Duration,

    /// Most client connections served at once; further ones wait in the
    /// kernel's listen backlog until one closes. Each costs a file
    /// descriptor, so it is lowered at start to what the descriptor limit
    /// (RLIMIT_NOFILE, raised to its hard limit first) leaves after a
    /// reserve for the store (`--segment-fd-cache` plus 64); the log says
    /// when. Higher serves more idle clients; lower keeps more in reserve.
    #[arg(long, env = "MSGBUS_MAX_CONNECTIONS", default_value_t = 4096)]
    pub max_connections: usize,

    /// A client must send a request's line and headers within this time of
    /// its first byte, or the connection is closed (a slow-headers client
    /// cannot hold a connection). Longer tolerates slower links.
    #[arg(long, env = "MSGBUS_HEADER_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub header_timeout: Duration,

    /// A keep-alive connection with no request in flight for this long is
    /// closed. Long-polls and event streams are requests in flight and are
    /// never cut. Longer saves reconnects; shorter frees idle descriptors.
    #[arg(long, env = "MSGBUS_IDLE_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub idle_timeout: Duration,

    /// Sealed segment files kept open for reads (least recently used are
    /// closed first). Sealed segments are opened on demand, so the number
    /// of segments is not bounded by the descriptor limit. More avoids
    /// reopening files for readers scattered over old data; fewer keeps
    /// descriptors for connections.
    #[arg(long, env = "MSGBUS_SEGMENT_FD_CACHE", default_value_t = 32)]
    pub segment_fd_cache: usize,

    /// Seconds between integrity checks (fractions allowed, e.g. `0.5`).
    /// Each check stats every file, re-verifies every byte of the active
    /// segment against the writer's CRC, scrubs one sealed segment's SHA-256
    /// and one file of the newest backup, and checks free space.
    #[arg(long, env = "MSGBUS_MONITOR_INTERVAL", default_value = "5", value_parser = parse_duration)]
    pub monitor_interval: Duration,

    /// Bytes a second the integrity monitor reads at most when it hashes
    /// files (`0`: as fast as it can). The first check after a start hashes
    /// every sealed segment (18 GB at 50 million events): unpaced, it takes
    /// the disk and page cache from publishers and readers for minutes;
    /// paced at the default it takes about 5 minutes at that size, and
    /// damage in a sealed segment is found that much later. Each periodic
    /// check hashes one segment (64 MiB: about a second). The backup
    /// thread reads at the same pace when it checks copies it did not just
    /// write (the newest backup at start, an older copy before a new backup
    /// links it). `POST /admin/verify` is never paced.
    #[arg(long, env = "MSGBUS_MONITOR_READ_RATE", default_value = "64MiB", value_parser = parse_bytes)]
    pub monitor_read_rate: u64,

    /// Take a backup this often when events were stored since the last
    /// one. Backups are also taken whenever a segment is sealed and on
    /// `POST /admin/backups`.
    #[arg(long, env = "MSGBUS_BACKUP_INTERVAL", default_value = "5m", value_parser = parse_duration)]
    pub backup_interval: Duration,

    /// Backups to keep. The newest verified backup is never deleted, and an
    /// old one only once a newer one has verified. Each backup holds every
    /// file, but backups share their copies of sealed segments (see
    /// `--backup-copies`): budget `backup-copies` times the sealed segments
    /// plus `backup-keep` times the active segment on disk.
    #[arg(long, env = "MSGBUS_BACKUP_KEEP", default_value_t = 10)]
    pub backup_keep: usize,

    /// Physically distinct backup copies of each sealed segment (1 or 2).
    /// Backups share (hard-link) one another's copies of a sealed segment,
    /// so the retained backups cost about this many times the segments on
    /// disk, not `backup-keep` times. With 2 (the default) one damaged
    /// backup copy always leaves another; 1 halves the backups' disk for
    /// very large stores, and a damaged backup copy then leaves only the
    /// live segment (the monitor's scrub finds it and the next backup
    /// copies the segment afresh).
    #[arg(long, env = "MSGBUS_BACKUP_COPIES", default_value_t = 2,
          value_parser = clap::value_parser!(u8).range(1..=2))]
    pub backup_copies: u8,

    /// Below this much free space on the data directory's filesystem,
    /// publishing answers 507 before anything is written; it resumes by
    /// itself when space returns.
    #[arg(long, env = "MSGBUS_MIN_FREE_BYTES", default_value = "64MiB", value_parser = parse_bytes)]
    pub min_free_bytes: u64,

    /// URL to POST alerts to, in `--alert-webhook-format`, retried with
    /// backoff. Empty: no webhook (with the `pagerduty` format, PagerDuty's
    /// Events v2 endpoint).
    #[arg(long, env = "MSGBUS_ALERT_WEBHOOK")]
    pub alert_webhook: Option<String>,

    /// Body format of the alert webhook: `slack` (`{"text"}` plus the
    /// structured alert), `discord` (`{"content"}`), `teams` (an Adaptive
    /// Card message), `pagerduty` (Events v2 `trigger`, and `resolve` when
    /// the condition clears; the routing key from
    /// `MSGBUS_PAGERDUTY_ROUTING_KEY`), `cloudevents` (a CloudEvent per
    /// alert raised or condition cleared). Default `slack`, as before.
    #[arg(long, env = "MSGBUS_ALERT_WEBHOOK_FORMAT", value_enum, default_value_t = crate::alerts::WebhookFormat::Slack)]
    pub alert_webhook_format: crate::alerts::WebhookFormat,

    /// SMTP server for alert email: `smtp://[user@]host[:587]` (STARTTLS
    /// required), `smtps://[user@]host[:465]` (TLS from the start), or
    /// `smtp://host:25?tls=none` (plain, for a local relay). The password
    /// comes only from `MSGBUS_SMTP_PASSWORD`. Unset (the default): no
    /// email. Needs `--alert-email-from` and `--alert-email-to`.
    #[arg(long, env = "MSGBUS_SMTP_URL")]
    pub smtp_url: Option<String>,

    /// PEM file of CA certificates to trust for the SMTP server, besides
    /// the bundled Mozilla roots (a private CA). Default: none.
    #[arg(long, env = "MSGBUS_SMTP_CA_FILE")]
    pub smtp_ca_file: Option<PathBuf>,

    /// Sender of alert email, e.g. `msgbus <bus@example.com>`.
    #[arg(long, env = "MSGBUS_ALERT_EMAIL_FROM")]
    pub alert_email_from: Option<String>,

    /// Recipients of alert email; repeat the flag or separate with commas.
    #[arg(long, env = "MSGBUS_ALERT_EMAIL_TO", value_delimiter = ',')]
    pub alert_email_to: Vec<String>,

    /// Shortest time between two alert mails: alerts raised meanwhile are
    /// grouped into the next one. Shorter tells sooner; longer sends fewer
    /// mails in a storm of alerts.
    #[arg(long, env = "MSGBUS_ALERT_EMAIL_INTERVAL", default_value = "60s", value_parser = parse_duration)]
    pub alert_email_interval: Duration,

    /// Alerts kept in memory for `GET /alerts` (oldest dropped first).
    #[arg(long, env = "MSGBUS_ALERT_CAPACITY", default_value_t = 1000)]
    pub alert_capacity: usize,

    /// On SIGTERM/SIGINT, how long in-flight requests may take to finish
    /// before their connections are closed. Keep the container stop grace
    /// period longer than this.
    #[arg(long, env = "MSGBUS_SHUTDOWN_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub shutdown_timeout: Duration,

    /// Comment line sent on an idle `GET /events/stream` this often, so
    /// proxies and load balancers keep the connection open.
    #[arg(long, env = "MSGBUS_SSE_HEARTBEAT", default_value = "15s", value_parser = parse_duration)]
    pub sse_heartbeat: Duration,

    /// Most concurrent `GET /events/stream` subscribers; more get 503 with
    /// `Retry-After`. Each holds at most one page (about 1 MiB) of events.
    #[arg(long, env = "MSGBUS_MAX_SUBSCRIBERS", default_value_t = 1024)]
    pub max_subscribers: usize,

    /// Most durable consumers (`PUT /consumers/{name}` of a new one beyond
    /// it answers 409). Each costs memory, a line in `/stats` and
    /// `/metrics`, and its share of the consumer state the writer keeps
    /// on disk; raise it for many workers, at that cost.
    #[arg(long, env = "MSGBUS_MAX_CONSUMERS", default_value_t = 1000)]
    pub max_consumers: usize,

    /// Most events leased at once per queue consumer; a fetch beyond it
    /// answers 429. It also bounds the events a queue reads ahead and
    /// keeps in memory (with their bytes until first delivered). Raise it
    /// for many workers with big batches, at that memory cost.
    #[arg(long, env = "MSGBUS_QUEUE_MAX_LEASES", default_value_t = 10_000)]
    pub queue_max_leases: usize,

    /// Most acknowledged and dead events a queue consumer keeps above its
    /// ack floor (the oldest event not yet done), about 50 bytes each in
    /// memory and in the consumers snapshot; an ack beyond it answers 429
    /// until the oldest leased events are acked or expire. Higher lets
    /// fast workers run further ahead of one stuck event.
    #[arg(long, env = "MSGBUS_QUEUE_MAX_ACKED", default_value_t = 100_000)]
    pub queue_max_acked: usize,
    /// Largest JSON Schema document `PUT /schemas/{type}` accepts, in
    /// bytes (413 beyond). Every version is kept in memory compiled and in
    /// `schemas.json`, rewritten whole at each change: larger documents
    /// cost memory and a longer rewrite. With `--backend nats` every
    /// version of a type must also fit in one NATS message (the servers'
    /// max_payload, 1 MiB by default; 413 beyond).
    #[arg(long, env = "MSGBUS_MAX_SCHEMA_BYTES", default_value_t = 256 * 1024)]
    pub max_schema_bytes: u64,

    /// Most schema versions one event type may have (409 beyond). Versions
    /// are immutable and never deleted, so this bounds the memory and file
    /// size one type can take; raise it for a type that changes often.
    #[arg(long, env = "MSGBUS_MAX_SCHEMA_VERSIONS", default_value_t = 100)]
    pub max_schema_versions: usize,

    /// Most event types with a schema, deleted ones included (409 beyond).
    /// Bounds memory, `schemas.json` and the per-type series of `/stats`.
    /// With `--backend nats` it is checked against each instance's copy of
    /// the schemas, so instances adding types at once may pass it by one
    /// each.
    #[arg(long, env = "MSGBUS_MAX_SCHEMA_TYPES", default_value_t = 1000)]
    pub max_schema_types: usize,

    /// The server's public base URL (e.g. `https://bus.example.com`), used
    /// in the `dataschema` the server sets on events of a type with a
    /// schema: `<public-url>/schemas/{type}/versions/{n}`. Unset (the
    /// default), `dataschema` is the relative reference
    /// `/schemas/{type}/versions/{n}`, resolved against whatever address a
    /// reader reached the bus at. The request's Host header is never used:
    /// a client chooses it, and the URL is stored in the event for good.
    #[arg(long, env = "MSGBUS_PUBLIC_URL", default_value = "", value_parser = parse_public_url)]
    pub public_url: String,

    /// Most requests per second from one client address, e.g. `100/s` or
    /// `6000/m`, with bursts of up to twice a second's worth; beyond it a
    /// request is answered 429 with `Retry-After` before its body is read.
    /// `/health/*` is exempt. Off by default: clients behind one proxy or
    /// NAT share an address, so set it to what the busiest legitimate
    /// address needs.
    #[arg(long, env = "MSGBUS_RATE", value_parser = Rate::parse)]
    pub rate: Option<Rate>,

    /// Most bytes of event reads per second from one token (or, for
    /// requests without a token, one client address), e.g. `64MiB/s`: the
    /// bodies of `GET /events` pages, `GET /events/{seq}` and consumer
    /// reads are charged after they are built (a read may run into debt);
    /// while in debt, reads get 429 with `Retry-After`. Bursts of two
    /// seconds' worth, and at least one `--max-page-bytes`. SSE streams are
    /// not charged (their bytes follow the publish rate and
    /// `--max-streams-per-token`). Off by default; a token's own
    /// `read_rate` overrides it. Lower keeps one client from filling the
    /// server's CPU and network with large pages; too low slows honest
    /// readers that catch up.
    #[arg(long, env = "MSGBUS_READ_RATE", value_parser = ByteRate::parse)]
    pub read_rate: Option<ByteRate>,

    /// Retention: keep at most about this many of the newest events. Whole
    /// sealed segments are deleted once every event in them is older, so
    /// up to one segment more is kept. Off by default.
    #[arg(long, env = "MSGBUS_RETENTION_MAX_EVENTS")]
    pub retention_max_events: Option<u64>,

    /// Retention: delete sealed segments whose newest event was written
    /// longer ago than this (e.g. `7d`, `12h`). Off by default.
    #[arg(long, env = "MSGBUS_RETENTION_MAX_AGE", value_parser = parse_duration)]
    pub retention_max_age: Option<Duration>,

    /// Retention: keep at most about this many bytes of segments (e.g.
    /// `10GiB`); up to one segment more is kept. Off by default.
    #[arg(long, env = "MSGBUS_RETENTION_MAX_BYTES", value_parser = parse_bytes)]
    pub retention_max_bytes: Option<u64>,

    /// Most event bytes in one page of `GET /events` or
    /// `GET /consumers/{name}/events`: a page stops before the event that
    /// would pass it (but always holds at least one, so the cursor moves)
    /// and `next_after` continues from there. Bounds a reader's memory to
    /// about this much plus one event; smaller means more round trips for
    /// readers of large events.
    #[arg(long, env = "MSGBUS_MAX_PAGE_BYTES", default_value = "4MiB", value_parser = parse_bytes)]
    pub max_page_bytes: u64,

    /// Per-type and per-source series in `/stats` and `/metrics`: the
    /// busiest this many, plus one `other` summing the rest. Bounds both
    /// answers (100,000 types made `/metrics` 4 MB) and the series a
    /// scraper stores; larger shows more of a long tail.
    #[arg(long, env = "MSGBUS_MAX_LABEL_SERIES", default_value_t = 100)]
    pub max_label_series: usize,

    /// TLS: serve HTTPS (HTTP/1.1 only) with this PEM certificate chain,
    /// the server's certificate first. Needs --tls-key. Off by default:
    /// plain HTTP, for loopback or behind a reverse proxy that terminates
    /// TLS. SIGHUP rereads both files; connections already open keep the
    /// certificate they started with, and a bad file keeps the old one.
    #[arg(long, env = "MSGBUS_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// TLS: the private key of --tls-cert, in PEM (PKCS#8, PKCS#1 or
    /// SEC1). Needs --tls-cert. Keep it readable by msgbus only.
    #[arg(long, env = "MSGBUS_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Where events are kept: `file` (the default: this process's data
    /// directory, one node) or `nats` (a NATS JetStream stream, which
    /// stateless msgbus instances can share; see `--nats-*`). With `nats`
    /// the data directory holds only the token file: no lock, no
    /// segments, no backups, monitor or retention ticker.
    #[arg(long, env = "MSGBUS_BACKEND", value_enum, default_value_t = Backend::File)]
    pub backend: Backend,

    /// The NATS JetStream backend's settings (used with `--backend nats`).
    #[command(flatten)]
    pub nats: NatsConfig,
}

/// Where events are kept (`--backend`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Backend {
    /// The data directory's segments (one node).
    #[default]
    File,
    /// A NATS JetStream stream.
    Nats,
}

/// How to reach and use NATS JetStream (`--backend nats`).
#[derive(Debug, Clone, Args)]
pub struct NatsConfig {
    /// NATS servers, comma-separated (`nats://h1:4222,nats://h2:4222`;
    /// `tls://` for TLS). Name several so msgbus can connect while one is
    /// down; the client learns the rest of the cluster from them.
    #[arg(
        long,
        env = "MSGBUS_NATS_URL",
        value_delimiter = ',',
        default_value = "nats://127.0.0.1:4222"
    )]
    pub nats_url: Vec<String>,

    /// The JetStream stream holding the events, created if missing; its
    /// subjects are `<name>.>`. Instances that share a stream serve the
    /// same events.
    #[arg(long, env = "MSGBUS_NATS_STREAM", default_value = "MSGBUS")]
    pub nats_stream: String,

    /// Replicas of the stream when msgbus creates it (1 to 5): 3 keeps
    /// serving, without losing an acknowledged event, while one server is
    /// down; every publish then waits for two servers. Refused above 1 on
    /// servers older than 2.10.11. An existing stream keeps its own count
    /// (a warning says so).
    #[arg(long, env = "MSGBUS_REPLICAS", default_value_t = 1)]
    pub replicas: usize,

    /// JetStream's duplicate window for a stream msgbus creates: a publish
    /// of an already stored `(source, id)` is answered as a duplicate only
    /// within this time of the original. 2 minutes (JetStream's own
    /// default) covers a client's retries after a timeout or a failover;
    /// longer costs server memory for every id published in the window.
    #[arg(long, env = "MSGBUS_NATS_DUPLICATE_WINDOW", default_value = "2m", value_parser = parse_duration)]
    pub nats_duplicate_window: Duration,

    /// Credentials, TLS and the connect timeout.
    #[command(flatten)]
    pub connect: NatsConnectArgs,
}

/// How to connect to NATS: credentials, TLS and the connect timeout. The
/// same flags (and `MSGBUS_*` variables) for `msgbus serve --backend nats`
/// and `msgbus migrate`.
#[derive(Debug, Clone, Args)]
pub struct NatsConnectArgs {
    /// A NATS credentials file (user JWT and NKey seed) to connect with.
    #[arg(long, env = "MSGBUS_NATS_CREDS")]
    pub nats_creds: Option<PathBuf>,

    /// A NATS user name; the password comes from `MSGBUS_NATS_PASSWORD`
    /// (environment only, so it is not in the process list).
    #[arg(long, env = "MSGBUS_NATS_USER")]
    pub nats_user: Option<String>,

    /// A NATS authentication token (prefer `MSGBUS_NATS_TOKEN`, which is
    /// not in the process list).
    #[arg(long, env = "MSGBUS_NATS_TOKEN", hide_env_values = true)]
    pub nats_token: Option<String>,

    /// PEM file of CA certificates to trust for `tls://` NATS servers
    /// (otherwise the bundled public roots).
    #[arg(long, env = "MSGBUS_NATS_CA_FILE")]
    pub nats_ca_file: Option<PathBuf>,

    /// How long connecting to NATS may take at start before msgbus gives
    /// up; after start it reconnects for as long as it runs.
    #[arg(long, env = "MSGBUS_NATS_CONNECT_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub nats_connect_timeout: Duration,
}

impl NatsConnectArgs {
    /// These options as the backend takes them, with the password from
    /// `MSGBUS_NATS_PASSWORD` (an empty one is none).
    pub fn settings(&self) -> crate::jetstream::ConnectSettings {
        crate::jetstream::ConnectSettings {
            creds: self.nats_creds.clone(),
            user: self.nats_user.clone(),
            password: std::env::var("MSGBUS_NATS_PASSWORD")
                .ok()
                .filter(|p| !p.is_empty()),
            token: self.nats_token.clone(),
            ca_file: self.nats_ca_file.clone(),
            connect_timeout: self.nats_connect_timeout,
        }
    }
}

impl ServeConfig {
    /// The alert channel settings.
    pub fn alert_settings(&self) -> crate::alerts::AlertSettings {
        crate::alerts::AlertSettings {
            alert_webhook: self.alert_webhook.clone(),
            alert_webhook_format: self.alert_webhook_format,
            smtp_url: self.smtp_url.clone(),
            smtp_ca_file: self.smtp_ca_file.clone(),
            alert_email_from: self.alert_email_from.clone(),
            alert_email_to: self.alert_email_to.clone(),
            alert_email_interval: self.alert_email_interval,
        }
    }
}

impl ServeConfig {
    /// The NATS JetStream backend's settings (`--nats-*`, and the
    /// `--retention-*` limits as the stream's limits).
    pub fn jetstream(&self) -> crate::jetstream::Settings {
        let n = &self.nats;
        crate::jetstream::Settings {
            urls: n
                .nats_url
                .iter()
                .map(|u| u.trim().to_string())
                .filter(|u| !u.is_empty())
                .collect(),
            stream: n.nats_stream.clone(),
            replicas: n.replicas,
            duplicate_window: n.nats_duplicate_window,
            connect: n.connect.settings(),
            max_messages: self.retention_max_events,
            max_age: self.retention_max_age,
            max_bytes: self.retention_max_bytes,
            max_event_bytes: self.max_event_bytes,
            queue_max_leases: self.queue_max_leases.max(1),
        }
    }

    /// The store's part of the settings.
    pub fn store(&self) -> StoreConfig {
        StoreConfig {
            data_dir: self.data_dir.clone(),
            segment_bytes: self.segment_bytes,
            queue_capacity: self.queue_capacity.max(1),
            read_cache_bytes: self.read_cache_bytes as usize,
            key_filter_headroom: self.key_filter_headroom,
            backup_keep: self.backup_keep,
            backup_copies: if self.backup_copies == 1 {
                crate::store::backup::Copies::One
            } else {
                crate::store::backup::Copies::Two
            },
            backup_read_rate: self.monitor_read_rate,
            segment_fd_cache: self.segment_fd_cache.max(1),
            retention: crate::store::retention::RetentionPolicy {
                max_events: self.retention_max_events,
                max_age: self.retention_max_age,
                max_bytes: self.retention_max_bytes,
            },
        }
    }
}

/// When a token is required (`--auth`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum AuthMode {
    /// Required once a token exists (or `MSGBUS_ADMIN_TOKEN` is set), and
    /// from then on, even after the last token is revoked; with none, open
    /// on a loopback address and refusing to start on any other.
    #[default]
    Auto,
    /// Always required (with no token, nothing but the health probes
    /// answers until one is created).
    Required,
    /// Never: every request may do everything.
    Off,
}

/// Which open routes need a token anyway (`--protect`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Protected {
    /// `/metrics` needs the read role.
    pub metrics: bool,
    /// `/docs` and `/openapi.json` need the read role.
    pub docs: bool,
}

/// A route `--protect` can put behind a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ProtectRoute {
    /// `/metrics`.
    Metrics,
    /// `/docs` and `/openapi.json`.
    Docs,
}

impl ServeConfig {
    /// The `--protect` routes.
    pub fn protected(&self) -> Protected {
        Protected {
            metrics: self.protect.contains(&ProtectRoute::Metrics),
            docs: self.protect.contains(&ProtectRoute::Docs),
        }
    }
}

/// A setting's value that does not parse (clap prints it after the flag).
#[derive(Debug, thiserror::Error)]
pub enum ValueError {
    /// Not a size.
    #[error("{0:?} is not a size such as 1048576 or 64MiB")]
    NotASize(String),
    /// A size with a unit msgbus does not know.
    #[error("unknown size unit {0:?}; use KiB, MiB or GiB")]
    SizeUnit(String),
    /// A size beyond 2^64 bytes.
    #[error("{0:?} is too large")]
    TooLarge(String),
    /// A negative or non-finite number of seconds.
    #[error("{0:?} is not a non-negative number of seconds")]
    Seconds(String),
    /// Not a rate.
    #[error("{0:?} is not a rate such as 100/s or 6000/m")]
    NotARate(String),
    /// Not a byte rate.
    #[error("{0:?} is not a byte rate such as 64MiB/s or 1GiB/m")]
    NotAByteRate(String),
    /// Neither seconds nor a duration with a unit.
    #[error("{0:?} is not a duration such as 5s or 500ms: {1}")]
    NotADuration(String, #[source] humantime::DurationError),
    /// Not an http(s) base URL.
    #[error("{0:?} is not a base URL such as https://bus.example.com (http or https, no query or fragment)")]
    NotABaseUrl(String),
}

/// Parses `--public-url`: empty, or an `http://` / `https://` URL without
/// spaces, query or fragment (a trailing `/` is dropped where it is used).
pub fn parse_public_url(s: &str) -> Result<String, ValueError> {
    let ok = s.is_empty()
        || ((s.starts_with("https://") || s.starts_with("http://"))
            && s.len() > "https://".len()
            && !s.contains(|c: char| c.is_whitespace() || c.is_control() || c == '?' || c == '#'));
    if ok {
        Ok(s.to_string())
    } else {
        Err(ValueError::NotABaseUrl(s.to_string()))
    }
}

/// Parses a byte size: a plain number, or one with a `KiB`/`MiB`/`GiB`
/// (or `KB`/`MB`/`GB`, `K`/`M`/`G`) suffix.
pub fn parse_bytes(s: &str) -> Result<u64, ValueError> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| ValueError::NotASize(s.to_string()))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        other => return Err(ValueError::SizeUnit(other.to_string())),
    };
    n.checked_mul(mult)
        .ok_or_else(|| ValueError::TooLarge(s.to_string()))
}

/// A request rate: `N/s` or `N/m` (`N` a positive whole number).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    count: u32,
    per: Duration,
}

impl Rate {
    /// Parses `100/s` or `6000/m`.
    pub fn parse(s: &str) -> Result<Rate, ValueError> {
        let bad = || ValueError::NotARate(s.to_string());
        let (n, unit) = s.trim().split_once('/').ok_or_else(bad)?;
        let count: u32 = n.trim().parse().map_err(|_| bad())?;
        let per = match unit.trim() {
            "s" => Duration::from_secs(1),
            "m" => Duration::from_secs(60),
            _ => return Err(bad()),
        };
        if count == 0 {
            return Err(bad());
        }
        Ok(Rate { count, per })
    }

    /// Requests per second.
    pub fn per_second(&self) -> f64 {
        f64::from(self.count) / self.per.as_secs_f64()
    }

    /// The most requests at once: twice a second's worth, at least one.
    pub fn burst(&self) -> f64 {
        (2.0 * self.per_second()).max(1.0)
    }
}

impl std::fmt::Display for Rate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let unit = if self.per.as_secs() == 60 { "m" } else { "s" };
        write!(f, "{}/{unit}", self.count)
    }
}

/// A byte rate: a size per second or per minute, e.g. `64MiB/s`,
/// `1GiB/m` (the size as [`parse_bytes`] reads it, not zero).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteRate {
    bytes: u64,
    per: Duration,
}

impl ByteRate {
    /// Parses `64MiB/s` or `1GiB/m`.
    pub fn parse(s: &str) -> Result<ByteRate, ValueError> {
        let bad = || ValueError::NotAByteRate(s.to_string());
        let (n, unit) = s.trim().split_once('/').ok_or_else(bad)?;
        let bytes = parse_bytes(n).map_err(|_| bad())?;
        let per = match unit.trim() {
            "s" => Duration::from_secs(1),
            "m" => Duration::from_secs(60),
            _ => return Err(bad()),
        };
        if bytes == 0 {
            return Err(bad());
        }
        Ok(ByteRate { bytes, per })
    }

    /// Bytes per second.
    pub fn per_second(&self) -> f64 {
        self.bytes as f64 / self.per.as_secs_f64()
    }

    /// The most bytes at once: two seconds' worth, at least `min`.
    pub fn burst(&self, min: u64) -> f64 {
        (2.0 * self.per_second()).max(min as f64).max(1.0)
    }
}

impl std::fmt::Display for ByteRate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let unit = if self.per.as_secs() == 60 { "m" } else { "s" };
        let b = self.bytes;
        let (n, suffix) = if b.is_multiple_of(1 << 30) {
            (b >> 30, "GiB")
        } else if b.is_multiple_of(1 << 20) {
            (b >> 20, "MiB")
        } else if b.is_multiple_of(1 << 10) {
            (b >> 10, "KiB")
        } else {
            (b, "B")
        };
        write!(f, "{n}{suffix}/{unit}")
    }
}

/// Parses a duration: `500ms`, `5s`, `2m`, `7d`, or a bare number of
/// seconds (fractions allowed, e.g. `0.5`).
pub fn parse_duration(s: &str) -> Result<Duration, ValueError> {
    let s = s.trim();
    if let Ok(secs) = s.parse::<f64>() {
        if secs.is_finite() && secs >= 0.0 {
            return Ok(Duration::from_secs_f64(secs));
        }
        return Err(ValueError::Seconds(s.to_string()));
    }
    humantime::parse_duration(s).map_err(|e| ValueError::NotADuration(s.to_string(), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_durations_parse() {
        assert_eq!(parse_bytes("64MiB").unwrap(), 64 << 20);
        assert_eq!(parse_bytes("4096").unwrap(), 4096);
        assert!(parse_bytes("12 parsecs").is_err());
        assert_eq!(parse_duration("0.5").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert!(parse_duration("-1").is_err());
    }

    #[test]
    fn public_urls_are_http_base_urls() {
        for ok in [
            "",
            "https://bus.example.com",
            "http://10.0.0.1:8080/",
            "https://h/bus",
        ] {
            assert_eq!(parse_public_url(ok).unwrap(), ok);
        }
        for bad in [
            "bus.example.com",
            "https://",
            "ftp://x",
            "https://x/?a=1",
            "https://x y",
        ] {
            assert!(parse_public_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn serve_and_migrate_take_the_same_nats_connection_flags() {
        use clap::Parser;
        let flags = [
            "--nats-creds",
            "/etc/msgbus/nats.creds",
            "--nats-user",
            "bus",
            "--nats-token",
            "tok",
            "--nats-ca-file",
            "/etc/msgbus/ca.pem",
            "--nats-connect-timeout",
            "3s",
        ];
        let serve = crate::cli::Cli::try_parse_from(["msgbus", "serve"].into_iter().chain(flags))
            .expect("serve takes the NATS connection flags");
        let migrate = crate::cli::Cli::try_parse_from(
            [
                "msgbus",
                "migrate",
                "--from-data-dir",
                "/var/lib/msgbus",
                "--to-nats",
                "nats://127.0.0.1:4222",
            ]
            .into_iter()
            .chain(flags),
        )
        .expect("migrate takes the NATS connection flags");
        let serve = match serve.command {
            Some(crate::cli::Command::Serve(c)) => c.jetstream().connect,
            other => panic!("not serve: {other:?}"),
        };
        let migrate = match migrate.command {
            Some(crate::cli::Command::Migrate(a)) => a.connect.settings(),
            other => panic!("not migrate: {other:?}"),
        };
        assert_eq!(serve, migrate);
        assert_eq!(serve.creds, Some(PathBuf::from("/etc/msgbus/nats.creds")));
        assert_eq!(serve.user.as_deref(), Some("bus"));
        assert_eq!(serve.token.as_deref(), Some("tok"));
        assert_eq!(serve.ca_file, Some(PathBuf::from("/etc/msgbus/ca.pem")));
        assert_eq!(serve.connect_timeout, Duration::from_secs(3));
    }

    #[test]
    fn byte_rates_parse_and_print() {
        for (text, per_sec, shown) in [
            ("64MiB/s", 64.0 * 1048576.0, "64MiB/s"),
            ("1GiB/m", 1073741824.0 / 60.0, "1GiB/m"),
            ("1500/s", 1500.0, "1500B/s"),
            ("8 KiB/s", 8192.0, "8KiB/s"),
        ] {
            let r = ByteRate::parse(text).unwrap();
            assert_eq!(r.per_second(), per_sec, "{text}");
            assert_eq!(r.to_string(), shown);
            assert_eq!(ByteRate::parse(shown).unwrap(), r);
        }
        for bad in ["0MiB/s", "64MiB", "64MiB/h", "/s", "many/s"] {
            assert!(ByteRate::parse(bad).is_err(), "{bad}");
        }
        let r = ByteRate::parse("1KiB/s").unwrap();
        assert_eq!(r.burst(4 << 20), f64::from(4 << 20));
        assert_eq!(r.burst(0), 2048.0);
    }
}
