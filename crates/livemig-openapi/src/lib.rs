//! The OpenAPI 3.1 documents of the two HTTP APIs, the RMS's ([`rms`]) and the agent's
//! ([`agent`]), built from the Rust types: the JSON Schemas come from the types' serde
//! attributes through `schemars` (the `openapi` feature of the type crates), the routes from
//! the tables below.
//!
//! The documents are committed as `docs/openapi/rms.json` and `docs/openapi/agent.json`. The
//! tests of this crate fail when they drift from the code (a type, a route or a status changed
//! without them); to regenerate both after a deliberate change:
//!
//! ```text
//! LIVEMIG_BLESS=1 cargo test -p livemig-openapi
//! ```
//!
//! and commit the rewritten files with the change.
//!
//! What is generated and what is written by hand:
//! - every request and answer body is the schema of the Rust type the handler decodes or
//!   encodes (one contract for both directions: what the services' serde *accepts*, so a
//!   field with a serde default is optional even in an answer that always carries it), but
//!   the guard's `{"status": "ok"}` of `/healthz`, written here by hand, and the dashboard's
//!   static files (text of a media type);
//! - the route tables ([`RMS`], [`AGENT`]) hold each route's method, path, summary, body type
//!   and answers per status, read from the handlers. A test checks that they list exactly the
//!   routes the routers serve (`livemig_rms_server::routes::ROUTES`,
//!   `livemig_agent::routes::ROUTES`, the RMS's open `livemig_rms_server::routes::OPEN_ROUTES`
//!   and the guard's open `GET /healthz`), so a route added
//!   to a router without a line here fails the tests;
//! - the statuses every route may answer are added to each: 401 (token; all but the open
//!   routes),
//!   503 (the request timeout), and 400/413 for a route that takes a body (malformed, too
//!   large) or 400 for one with a path parameter.

use std::collections::BTreeMap;

use schemars::generate::{SchemaGenerator, SchemaSettings};
use schemars::{JsonSchema, Schema};
use serde_json::{json, Map, Value};

use livemig_agent::api as agent_api;
use livemig_api::{
    AgentEvent, AgentReportPost, ErrorBody, GrantApplied, GrantRequest, Heartbeat, IncomingReady,
    IncomingRequest, OutgoingRequest, Register, Registered, RunReport, SampleRequest, VmSample,
};
use livemig_rms::api::{Created, HostView, MigrationRequest, MigrationView, VmRequest};
use livemig_rms::inventory::Vm;
use livemig_rms::orchestrator::{BudgetView, DrainProgress};
use livemig_rms_server::routes::fleet::DrainStarted;
use livemig_rms_server::routes::public::{ResolveRequest, VmCreated};

/// Where the committed documents live, from the workspace root.
pub const RMS_FILE: &str = "docs/openapi/rms.json";
/// See [`RMS_FILE`].
pub const AGENT_FILE: &str = "docs/openapi/agent.json";

/// A body's schema, made by the generator (so that named types land in the components).
type SchemaFn = fn(&mut SchemaGenerator) -> Schema;

fn schema<T: JsonSchema>(g: &mut SchemaGenerator) -> Schema {
    g.subschema_for::<T>()
}

/// What a body holds.
#[derive(Debug, Clone, Copy)]
pub enum Body {
    /// `application/json` of a Rust type.
    Json(SchemaFn),
    /// `application/json` of a list of a Rust type.
    List(SchemaFn),
    /// `application/json` written by hand (the guard's `/healthz`).
    Literal(fn() -> Value),
    /// Prometheus text (`text/plain; version=0.0.4`).
    Prometheus,
    /// A static file compiled into the service, of this media type (the dashboard's page,
    /// script and style sheet).
    Static(&'static str),
    /// No body.
    Empty,
}

/// A path parameter, or an optional query parameter.
#[derive(Debug, Clone, Copy)]
pub struct Param {
    pub name: &'static str,
    pub description: &'static str,
    /// A migration number (the handler refuses anything else with 400); else a string.
    pub integer: bool,
    /// In the query string (optional), not in the path (required).
    pub in_query: bool,
}

/// One route: what the handler takes and answers.
#[derive(Debug, Clone, Copy)]
pub struct Op {
    pub method: &'static str,
    /// axum's syntax, which is OpenAPI's (`/api/v1/vms/{name}`).
    pub path: &'static str,
    pub id: &'static str,
    pub summary: &'static str,
    pub params: &'static [Param],
    pub request: Option<SchemaFn>,
    /// The success answer: status, description, body.
    pub ok: (u16, &'static str, Body),
    /// The refusals particular to this route (`ErrorBody`): status, when.
    pub errors: &'static [(u16, &'static str)],
    /// Behind the bearer token (every route but `/healthz` and the RMS's dashboard files).
    pub secured: bool,
}

const fn string(name: &'static str, description: &'static str) -> Param {
    Param {
        name,
        description,
        integer: false,
        in_query: false,
    }
}

const fn number(name: &'static str, description: &'static str) -> Param {
    Param {
        name,
        description,
        integer: true,
        in_query: false,
    }
}

const fn query(name: &'static str, description: &'static str, integer: bool) -> Param {
    Param {
        name,
        description,
        integer,
        in_query: true,
    }
}

fn health() -> Value {
    json!({
        "type": "object",
        "properties": {"status": {"type": "string", "const": "ok"}},
        "required": ["status"],
    })
}

const HEALTHZ: Op = Op {
    method: "GET",
    path: livemig_http::guard::HEALTHZ,
    id: "healthz",
    summary: "Whether the service answers (no token needed)",
    params: &[],
    request: None,
    ok: (200, "The service answers", Body::Literal(health)),
    errors: &[],
    secured: false,
};

const VM_NAME: Param = string("name", "The VM's name (1 to 64 of `A-Z a-z 0-9 . _ -`)");
const MIGRATION_ID: Param = number("id", "The migration's id");
const HOST_NAME: Param = string("name", "The host's name (1 to 64 of `A-Z a-z 0-9 . _ -`)");

/// The RMS's routes (`livemig_rms_server::routes`).
pub const RMS: &[Op] = &[
    Op {
        method: "GET",
        path: "/api/v1/hosts",
        id: "listHosts",
        summary: "The hosts the RMS knows, alive or lost",
        params: &[],
        request: None,
        ok: (200, "Every host", Body::List(schema::<HostView>)),
        errors: &[],
        secured: true,
    },
    Op {
        method: "GET",
        path: "/api/v1/vms",
        id: "listVms",
        summary: "The VMs the RMS places, with their hosts",
        params: &[],
        request: None,
        ok: (200, "Every VM", Body::List(schema::<Vm>)),
        errors: &[],
        secured: true,
    },
    Op {
        method: "POST",
        path: "/api/v1/vms",
        id: "createVm",
        summary: "Start a VM on a host's agent, then record it",
        params: &[],
        request: Some(schema::<VmRequest>),
        ok: (201, "The VM runs on `host`", Body::Json(schema::<VmCreated>)),
        errors: &[
            (404, "No host has the name asked for"),
            (409, "A VM of that name exists or is being created or deleted, the host asked for is lost, or no alive host has the room"),
            (422, "An invalid VM name, or `memory_bytes` is zero"),
            (502, "The host's agent could not be reached (a refusal of the agent is passed on with its own status)"),
        ],
        secured: true,
    },
    Op {
        method: "GET",
        path: "/api/v1/vms/{name}",
        id: "getVm",
        summary: "One VM and its host",
        params: &[VM_NAME],
        request: None,
        ok: (200, "The VM", Body::Json(schema::<Vm>)),
        errors: &[(404, "No VM has that name")],
        secured: true,
    },
    Op {
        method: "DELETE",
        path: "/api/v1/vms/{name}",
        id: "deleteVm",
        summary: "Stop a VM on its agent, then forget it",
        params: &[VM_NAME],
        request: None,
        ok: (200, "The VM as it was recorded", Body::Json(schema::<Vm>)),
        errors: &[
            (404, "No VM has that name"),
            (409, "A migration holds the VM (wait for it or cancel it), or another request on it is in progress"),
            (502, "The host's agent could not be reached (a refusal of the agent is passed on with its own status)"),
        ],
        secured: true,
    },
    Op {
        method: "GET",
        path: "/api/v1/migrations",
        id: "listMigrations",
        summary: "The migrations, running or over, in id order; filtered and paged by the query",
        params: &[
            query("state", "Only migrations in this state (queued, placing, running, switching_over, completed, failed, cancelled, unknown)", false),
            query("vm", "Only migrations of this VM", false),
            query("after", "Only migrations with a greater id (the `x-next-after` of the previous page)", true),
            query("limit", "At most this many (1 to 100; default 100)", true),
        ],
        request: None,
        ok: (
            200,
            "The migrations asked for; when more match, the header `x-next-after` names the id to ask `after=` for the next page",
            Body::List(schema::<MigrationView>),
        ),
        errors: &[(400, "An unknown query key, a key given twice, or a value out of range")],
        secured: true,
    },
    Op {
        method: "POST",
        path: "/api/v1/migrations",
        id: "submitMigration",
        summary: "Ask for a VM's migration (queued, then placed and run)",
        params: &[],
        request: Some(schema::<MigrationRequest>),
        ok: (202, "Accepted: follow it at `/api/v1/migrations/{id}`", Body::Json(schema::<Created>)),
        errors: &[
            (404, "No such VM, or no such target host"),
            (409, "The VM is being migrated, created or deleted, its location is unknown, or a host is lost"),
            (422, "An unknown policy, or the target is the VM's own host"),
        ],
        secured: true,
    },
    Op {
        method: "GET",
        path: "/api/v1/migrations/{id}",
        id: "getMigration",
        summary: "One migration: state, placement attempts, rounds, report",
        params: &[MIGRATION_ID],
        request: None,
        ok: (200, "The migration", Body::Json(schema::<MigrationView>)),
        errors: &[(400, "The id is not a number"), (404, "No migration has that id")],
        secured: true,
    },
    Op {
        method: "DELETE",
        path: "/api/v1/migrations/{id}",
        id: "cancelMigration",
        summary: "Ask to cancel a migration before its commit point",
        params: &[MIGRATION_ID],
        request: None,
        ok: (202, "The cancel is asked; the migration as it stands", Body::Json(schema::<MigrationView>)),
        errors: &[
            (400, "The id is not a number"),
            (404, "No migration has that id"),
            (409, "Too late (past the commit point), already over, or `unknown` (resolve it instead)"),
        ],
        secured: true,
    },
    Op {
        method: "POST",
        path: "/api/v1/migrations/{id}/resolve",
        id: "resolveMigration",
        summary: "Settle an `unknown` migration: the operator found the guest on `host`",
        params: &[MIGRATION_ID],
        request: Some(schema::<ResolveRequest>),
        ok: (200, "The migration, settled", Body::Json(schema::<MigrationView>)),
        errors: &[
            (400, "The id is not a number, or an invalid body"),
            (404, "No migration has that id, or no host has that name"),
            (409, "The migration is not `unknown`, or the host takes no part in it"),
        ],
        secured: true,
    },
    Op {
        method: "GET",
        path: "/api/v1/budget",
        id: "getBudget",
        summary: "The shared migration budget: its scheme, its rate, every running migration's grant",
        params: &[],
        request: None,
        ok: (200, "The budget as it stands (`slots` without a budget)", Body::Json(schema::<BudgetView>)),
        errors: &[],
        secured: true,
    },
    Op {
        method: "POST",
        path: "/api/v1/hosts/{name}/drain",
        id: "drainHost",
        summary: "Evacuate a host: it takes no new VMs, and each of its VMs is submitted for migration",
        params: &[HOST_NAME],
        request: None,
        ok: (202, "Drained: the migrations submitted, and the drain's progress", Body::Json(schema::<DrainStarted>)),
        errors: &[
            (404, "No host has that name"),
            (409, "Its host is lost, so its VMs cannot be migrated"),
            (422, "Not a host name"),
        ],
        secured: true,
    },
    Op {
        method: "GET",
        path: "/api/v1/hosts/{name}/drain",
        id: "drainProgress",
        summary: "How far a host's drain is: VMs left, bytes left, the estimated time to empty",
        params: &[HOST_NAME],
        request: None,
        ok: (200, "The drain's progress", Body::Json(schema::<DrainProgress>)),
        errors: &[(404, "No host has that name"), (422, "Not a host name")],
        secured: true,
    },
    Op {
        method: "DELETE",
        path: "/api/v1/hosts/{name}/drain",
        id: "undrainHost",
        summary: "The host takes VMs again (the migrations its drain started go on)",
        params: &[HOST_NAME],
        request: None,
        ok: (200, "The host's drain progress, no longer draining", Body::Json(schema::<DrainProgress>)),
        errors: &[(404, "No host has that name"), (422, "Not a host name")],
        secured: true,
    },
    Op {
        method: "POST",
        path: "/api/v1/agents/register",
        id: "registerAgent",
        summary: "An agent introduces itself and the VMs it runs",
        params: &[],
        request: Some(schema::<Register>),
        ok: (200, "Registered: how often to heartbeat, and a certificate when the RMS has a CA", Body::Json(schema::<Registered>)),
        errors: &[
            (409, "A host of that name is alive at another address"),
            (422, "An invalid host or VM name, address, data_host, timeout or certificate request, or no certificate request to an RMS with a CA"),
        ],
        secured: true,
    },
    Op {
        method: "POST",
        path: "/api/v1/agents/heartbeat",
        id: "heartbeat",
        summary: "An agent is alive, with its free memory",
        params: &[],
        request: Some(schema::<Heartbeat>),
        ok: (204, "Heard", Body::Empty),
        errors: &[(404, "The RMS does not know the host: register again")],
        secured: true,
    },
    Op {
        method: "POST",
        path: "/api/v1/agents/events",
        id: "postEvent",
        summary: "One event of a migration an agent runs",
        params: &[],
        request: Some(schema::<AgentEvent>),
        ok: (204, "Recorded", Body::Empty),
        errors: &[
            (404, "No such migration or host"),
            (409, "The event contradicts the record, or the host takes no part in the migration"),
        ],
        secured: true,
    },
    Op {
        method: "POST",
        path: "/api/v1/agents/reports",
        id: "postReport",
        summary: "The source's final report of a migration",
        params: &[],
        request: Some(schema::<AgentReportPost>),
        ok: (204, "Recorded", Body::Empty),
        errors: &[
            (404, "No migration has that id"),
            (409, "The host is not the migration's source"),
        ],
        secured: true,
    },
    Op {
        method: "GET",
        path: "/metrics",
        id: "metrics",
        summary: "Prometheus metrics",
        params: &[],
        request: None,
        ok: (200, "The metrics, Prometheus text format 0.0.4", Body::Prometheus),
        errors: &[],
        secured: true,
    },
    Op {
        method: "GET",
        path: "/",
        id: "dashboard",
        summary: "The dashboard: a web page of the hosts, VMs and live migrations (no token needed: it asks this API with the token it is given)",
        params: &[],
        request: None,
        ok: (200, "The page (strict Content-Security-Policy, no caching)", Body::Static("text/html")),
        errors: &[],
        secured: false,
    },
    Op {
        method: "GET",
        path: "/assets/dashboard.js",
        id: "dashboardScript",
        summary: "The dashboard's script (no token needed)",
        params: &[],
        request: None,
        ok: (200, "The script", Body::Static("text/javascript")),
        errors: &[],
        secured: false,
    },
    Op {
        method: "GET",
        path: "/assets/dashboard.css",
        id: "dashboardStyle",
        summary: "The dashboard's style sheet (no token needed)",
        params: &[],
        request: None,
        ok: (200, "The style sheet", Body::Static("text/css")),
        errors: &[],
        secured: false,
    },
    HEALTHZ,
];

/// The agent's routes (`livemig_agent::routes`).
pub const AGENT: &[Op] = &[
    Op {
        method: "GET",
        path: "/api/v1/info",
        id: "getInfo",
        summary: "The host: its memory, its VMs, its reservations",
        params: &[],
        request: None,
        ok: (200, "The host", Body::Json(schema::<agent_api::Info>)),
        errors: &[],
        secured: true,
    },
    Op {
        method: "POST",
        path: "/api/v1/capacity",
        id: "inquireCapacity",
        summary: "Can this host take a VM of this size? Reserves the room if so",
        params: &[],
        request: Some(schema::<agent_api::CapacityRequest>),
        ok: (200, "Accepted (with a reservation) or refused (with the reason): both are answers", Body::Json(schema::<agent_api::Answer>)),
        errors: &[],
        secured: true,
    },
    Op {
        method: "DELETE",
        path: "/api/v1/capacity/{id}",
        id: "releaseReservation",
        summary: "Give a reservation's room back",
        params: &[string("id", "The reservation's id")],
        request: None,
        ok: (200, "Released", Body::Json(schema::<agent_api::Released>)),
        errors: &[(404, "No such reservation (unknown, released, claimed or expired)")],
        secured: true,
    },
    Op {
        method: "GET",
        path: "/api/v1/vms",
        id: "listVms",
        summary: "The VMs this host runs",
        params: &[],
        request: None,
        ok: (200, "Every VM here", Body::List(schema::<agent_api::VmView>)),
        errors: &[],
        secured: true,
    },
    Op {
        method: "POST",
        path: "/api/v1/vms",
        id: "startVm",
        summary: "Start a VM on this host",
        params: &[],
        request: Some(schema::<agent_api::VmRequest>),
        ok: (201, "The VM runs", Body::Json(schema::<agent_api::VmView>)),
        errors: &[
            (409, "No room, the name is taken, too many VMs, or a VM of that name is migrating"),
            (422, "An invalid name, kind, size (whole 4 KiB pages, not zero; for `qemu` at least 64 MiB, a multiple of 8 KiB and not of 256 KiB) or workload"),
            (503, "A `qemu` VM on a host without QEMU or the guest image, or QEMU did not start; or the request took too long"),
        ],
        secured: true,
    },
    Op {
        method: "GET",
        path: "/api/v1/vms/{name}",
        id: "getVm",
        summary: "One VM of this host",
        params: &[VM_NAME],
        request: None,
        ok: (200, "The VM", Body::Json(schema::<agent_api::VmView>)),
        errors: &[(404, "No VM of that name runs here")],
        secured: true,
    },
    Op {
        method: "DELETE",
        path: "/api/v1/vms/{name}",
        id: "stopVm",
        summary: "Stop a VM and free its memory",
        params: &[VM_NAME],
        request: None,
        ok: (200, "The VM as it was", Body::Json(schema::<agent_api::VmView>)),
        errors: &[
            (404, "No VM of that name runs here"),
            (409, "The VM is migrating or being sampled, or a `qemu` VM is held paused here after a hand-over in doubt"),
        ],
        secured: true,
    },
    Op {
        method: "POST",
        path: "/api/v1/vms/{name}/sample",
        id: "sampleVm",
        summary: "Sample a VM's dirty log, sending nothing (`sim`: the log cleared, then five points; `qemu`: QEMU's calc-dirty-rate for the whole seconds, one point); the VM is held as by a migration meanwhile",
        params: &[VM_NAME],
        request: Some(schema::<SampleRequest>),
        ok: (200, "The sample: points of (elapsed seconds, distinct dirty bytes)", Body::Json(schema::<VmSample>)),
        errors: &[
            (404, "No VM of that name runs here"),
            (409, "The VM is migrating, held after a hand-over in doubt, or being sampled already"),
            (422, "seconds is not a finite number from 0.2 to 10"),
            (503, "The agent is stopping (a sample under way ends with it), QEMU's QMP or its measurement failed, or the request took too long"),
        ],
        secured: true,
    },
    Op {
        method: "POST",
        path: "/api/v1/incoming",
        id: "prepareIncoming",
        summary: "Destination: get ready to receive a VM into a reservation",
        params: &[],
        request: Some(schema::<IncomingRequest>),
        ok: (201, "Listening for the migration's data stream", Body::Json(schema::<IncomingReady>)),
        errors: &[
            (404, "No such reservation"),
            (409, "The VM runs here already, the migration is known, or TLS was asked for and the host has no certificate"),
            (422, "A malformed key, a size other than the reservation's, an unsupported kind, an invalid VM, or a TLS setup error"),
            (500, "Cannot listen or start the migration's thread"),
        ],
        secured: true,
    },
    Op {
        method: "POST",
        path: "/api/v1/outgoing",
        id: "startOutgoing",
        summary: "Source: migrate a VM to a destination that is ready",
        params: &[],
        request: Some(schema::<OutgoingRequest>),
        ok: (202, "The migration runs; its events follow", Body::Json(schema::<agent_api::OutgoingStarted>)),
        errors: &[
            (404, "No VM of that name runs here"),
            (409, "The VM is migrating already, the migration is known, or TLS was asked for and the host has no certificate"),
            (422, "A malformed key, an unknown policy, invalid settings or data_address, or a TLS setup error"),
            (500, "Cannot start the migration's thread"),
        ],
        secured: true,
    },
    Op {
        method: "DELETE",
        path: "/api/v1/outgoing/{migration}",
        id: "cancelOutgoing",
        summary: "Source: ask to cancel a migration before its commit point",
        params: &[number("migration", "The migration's number")],
        request: None,
        ok: (202, "The cancel is asked; its outcome comes as the migration's events", Body::Json(schema::<agent_api::CancelAsked>)),
        errors: &[
            (400, "The migration is not a number"),
            (404, "No such migration leaves this host"),
            (409, "Past its commit point, or ended"),
        ],
        secured: true,
    },
    Op {
        method: "PUT",
        path: "/api/v1/outgoing/{migration}/grant",
        id: "grantOutgoing",
        summary: "Source: bound a running migration's cap (every round's and the stop-and-copy's) by a grant, or lift it",
        params: &[number("migration", "The migration's number")],
        request: Some(schema::<GrantRequest>),
        ok: (200, "The grant is in force; the executor applies it at its next steering (a `cap_granted` event)", Body::Json(schema::<GrantApplied>)),
        errors: &[
            (400, "The migration is not a number, or an invalid JSON body (malformed, the wrong shape, an unknown field)"),
            (404, "No such migration here"),
            (409, "The migration comes in here, or it has ended"),
            (422, "bytes_per_s is not finite or not above 0"),
        ],
        secured: true,
    },
    Op {
        method: "GET",
        path: "/api/v1/report",
        id: "getReport",
        summary: "What this host runs and the migrations it knows of (the RMS's recovery)",
        params: &[],
        request: None,
        ok: (200, "The report", Body::Json(schema::<RunReport>)),
        errors: &[],
        secured: true,
    },
    Op {
        method: "GET",
        path: "/metrics",
        id: "metrics",
        summary: "Prometheus metrics",
        params: &[],
        request: None,
        ok: (200, "The metrics, Prometheus text format 0.0.4", Body::Prometheus),
        errors: &[],
        secured: true,
    },
    HEALTHZ,
];

/// The RMS's document.
pub fn rms() -> Value {
    document(
        "livemig RMS API",
        "The Resource Management System: operators manage hosts, VMs and migrations \
         (`/api/v1/hosts`, `/api/v1/vms`, `/api/v1/migrations`); agents register, heartbeat and \
         post their migrations' events and reports (`/api/v1/agents/...`).",
        RMS,
    )
}

/// The agent's document.
pub fn agent() -> Value {
    document(
        "livemig agent API",
        "The agent of one host: its capacity and reservations, the VMs it runs, and the \
         migrations the RMS asks of it (`/api/v1/incoming` on the destination, \
         `/api/v1/outgoing` on the source).",
        AGENT,
    )
}

/// The text committed for a document: pretty JSON, keys sorted, one final newline.
pub fn to_text(doc: &Value) -> String {
    let mut s = serde_json::to_string_pretty(&sorted(doc)).expect("a JSON value serialises");
    s.push('\n');
    s
}

/// The same value with every object's keys in order (whatever the map type serde_json is
/// built with, so the committed text does not depend on it).
fn sorted(v: &Value) -> Value {
    match v {
        Value::Object(o) => {
            let keys: BTreeMap<&String, &Value> = o.iter().collect();
            Value::Object(
                keys.into_iter()
                    .map(|(k, v)| (k.clone(), sorted(v)))
                    .collect(),
            )
        }
        Value::Array(a) => Value::Array(a.iter().map(sorted).collect()),
        other => other.clone(),
    }
}

fn document(title: &str, description: &str, ops: &[Op]) -> Value {
    let settings = SchemaSettings::draft2020_12().with(|s| {
        s.definitions_path = "/components/schemas".into();
        s.meta_schema = None;
    });
    let mut g = SchemaGenerator::new(settings);
    let error = g.subschema_for::<ErrorBody>().to_value();

    let mut paths = Map::new();
    for op in ops {
        let item = paths
            .entry(op.path)
            .or_insert_with(|| Value::Object(Map::new()));
        let key = op.method.to_ascii_lowercase();
        let prev = item
            .as_object_mut()
            .expect("a path item is an object")
            .insert(key, operation(&mut g, op, &error));
        assert!(prev.is_none(), "{} {} is listed twice", op.method, op.path);
    }

    let open: Vec<String> = ops
        .iter()
        .filter(|op| !op.secured)
        .map(|op| format!("`{}`", op.path))
        .collect();
    let open = match open.split_last() {
        Some((last, [])) => last.clone(),
        Some((last, rest)) => format!("{} and {last}", rest.join(", ")),
        None => "none".into(),
    };

    let schemas = g.take_definitions(true);
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": title,
            "version": env!("CARGO_PKG_VERSION"),
            "description": format!(
                "{description}\n\nEvery route but {open} needs `Authorization: Bearer <token>`. \
                 Every error answer is `{{\"error\": \"...\"}}` (`ErrorBody`); besides the statuses \
                 listed, any route may answer 500 on an internal fault. Generated from the Rust \
                 types by `livemig-openapi`."
            ),
            "license": {"name": "Apache-2.0", "identifier": "Apache-2.0"},
        },
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "The cluster's token, from the token file (`Authorization: Bearer <token>`).",
                },
            },
        },
    })
}

fn placeholders(path: &str) -> Vec<&str> {
    path.split('/')
        .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
        .collect()
}

fn body(g: &mut SchemaGenerator, b: Body) -> Option<Value> {
    let json = |schema: Value| Some(json!({"application/json": {"schema": schema}}));
    match b {
        Body::Json(f) => json(f(g).to_value()),
        Body::List(f) => json(json!({"type": "array", "items": f(g).to_value()})),
        Body::Literal(f) => json(f()),
        Body::Prometheus => Some(json!({"text/plain": {"schema": {"type": "string"}}})),
        Body::Static(media) => Some(json!({media: {"schema": {"type": "string"}}})),
        Body::Empty => None,
    }
}

fn operation(g: &mut SchemaGenerator, op: &Op, error: &Value) -> Value {
    let names: Vec<&str> = op
        .params
        .iter()
        .filter(|p| !p.in_query)
        .map(|p| p.name)
        .collect();
    assert_eq!(
        names,
        placeholders(op.path),
        "{} {}: the parameters differ from the path's",
        op.method,
        op.path
    );

    // The statuses every route may answer, then the route's own (which may say more).
    let mut errors: BTreeMap<u16, String> = BTreeMap::new();
    if op.secured {
        errors.insert(401, "Missing or wrong token".into());
    }
    errors.insert(
        503,
        "The request took longer than the service's request timeout, or the service is stopping"
            .into(),
    );
    if op.params.iter().any(|p| !p.in_query) {
        errors.insert(400, "An invalid path".into());
    }
    if op.request.is_some() {
        errors.insert(
            400,
            "An invalid JSON body (malformed, the wrong shape, an unknown field, a NUL character, \
             an integer beyond 2^63-1)"
                .into(),
        );
        errors.insert(413, "The body is larger than the service's cap".into());
    }
    for (status, when) in op.errors {
        errors.insert(*status, (*when).into());
    }

    let mut responses = Map::new();
    let (status, description, ok) = op.ok;
    let mut answer = json!({"description": description});
    if let Some(content) = body(g, ok) {
        answer["content"] = content;
    }
    responses.insert(status.to_string(), answer);
    for (status, when) in errors {
        let mut answer = json!({
            "description": when,
            "content": {"application/json": {"schema": error.clone()}},
        });
        if status == 401 {
            answer["headers"] = json!({
                "WWW-Authenticate": {"schema": {"type": "string", "const": "Bearer"}},
            });
        }
        responses.insert(status.to_string(), answer);
    }

    let mut o = json!({
        "operationId": op.id,
        "summary": op.summary,
        "responses": responses,
    });
    if !op.params.is_empty() {
        o["parameters"] = op
            .params
            .iter()
            .map(|p| {
                let schema = if p.integer {
                    json!({"type": "integer", "format": "uint64", "minimum": 0})
                } else {
                    json!({"type": "string"})
                };
                json!({
                    "name": p.name,
                    "in": if p.in_query { "query" } else { "path" },
                    "required": !p.in_query,
                    "description": p.description,
                    "schema": schema,
                })
            })
            .collect();
    }
    if let Some(f) = op.request {
        o["requestBody"] = json!({
            "required": true,
            "content": {"application/json": {"schema": f(g).to_value()}},
        });
    }
    if !op.secured {
        o["security"] = json!([]);
    }
    o
}
