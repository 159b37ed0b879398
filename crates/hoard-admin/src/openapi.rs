//! The operator API described for tools: every route under `/api/v1` with what it takes and answers,
//! and `/api/v1/openapi.json` built from that table and the types in [`crate::api`]. The server's
//! answers are checked against this description by a test (`tests/admin_api.rs`).

use utoipa::OpenApi;
use utoipa::openapi::path::{HttpMethod, OperationBuilder, ParameterBuilder, ParameterIn};
use utoipa::openapi::request_body::RequestBodyBuilder;
use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, Type};
use utoipa::openapi::{
    ContentBuilder, InfoBuilder, PathItem, PathsBuilder, Ref, RefOr, Required, ResponseBuilder,
    Schema,
};

use crate::api::*;

/// What a route answers with on success.
#[derive(Clone, Copy, Debug)]
pub enum Answer {
    /// One value of the named schema.
    One(&'static str),
    /// A list of values of the named schema.
    List(&'static str),
}

/// A query parameter.
#[derive(Clone, Copy, Debug)]
pub struct Param {
    pub name: &'static str,
    /// `number`, `integer` or `string`.
    pub kind: &'static str,
    pub about: &'static str,
}

/// One route of the operator API.
#[derive(Clone, Copy, Debug)]
pub struct Route {
    /// `get` or `post`.
    pub method: &'static str,
    pub path: &'static str,
    pub summary: &'static str,
    pub query: &'static [Param],
    /// The schema of the JSON body; an empty body is taken as all fields absent.
    pub body: Option<&'static str>,
    pub answer: Answer,
    /// Error statuses it can answer besides 400 and 500 (each with an [`ApiError`] body).
    pub errors: &'static [u16],
}

const fn get(path: &'static str, summary: &'static str, answer: Answer) -> Route {
    Route {
        method: "get",
        path,
        summary,
        query: &[],
        body: None,
        answer,
        errors: &[],
    }
}

const fn post(path: &'static str, summary: &'static str, answer: Answer) -> Route {
    Route {
        method: "post",
        ..get(path, summary, answer)
    }
}

use Answer::{List, One};

/// Routes every role serves.
pub const COMMON: &[Route] = &[
    get(
        "/api/v1/openapi.json",
        "This description",
        One("OpenApiDocument"),
    ),
    get(
        "/api/v1/workers",
        "The background jobs of this process",
        List("WorkerView"),
    ),
    Route {
        body: Some("WorkerRequest"),
        errors: &[404, 409],
        ..post(
            "/api/v1/workers/pause",
            "Pause a worker, or every worker under NAME/",
            List("WorkerView"),
        )
    },
    Route {
        body: Some("WorkerRequest"),
        errors: &[404],
        ..post(
            "/api/v1/workers/resume",
            "Resume a worker, or every worker under NAME/",
            List("WorkerView"),
        )
    },
    Route {
        body: Some("WorkerRequest"),
        errors: &[404],
        ..post(
            "/api/v1/workers/cancel",
            "Cancel a worker, or every worker under NAME/",
            List("WorkerView"),
        )
    },
    Route {
        body: Some("WorkerRequest"),
        errors: &[404, 409],
        ..post(
            "/api/v1/workers/throttle",
            "Set the bytes per second of a worker's throttle",
            List("WorkerView"),
        )
    },
];

const DRAIN: Route = Route {
    body: Some("DrainRequest"),
    errors: &[404, 409],
    ..post("", "", One("DrainStarted"))
};

/// Routes of the process that runs meta.
pub const META: &[Route] = &[
    get("/api/v1/status", "The cell at a glance", One("CellStatus")),
    get(
        "/api/v1/events",
        "Recent warnings and errors of this process",
        List("EventView"),
    ),
    get("/api/v1/nodes", "Volume servers", List("NodeView")),
    get("/api/v1/disks", "Disks", List("DiskView")),
    get("/api/v1/volumes", "Volumes", List("VolumeView")),
    get(
        "/api/v1/repair",
        "The repair queue and knobs",
        One("RepairStatus"),
    ),
    post("/api/v1/repair/pause", "Pause repair", One("RepairStatus")),
    post(
        "/api/v1/repair/resume",
        "Resume repair",
        One("RepairStatus"),
    ),
    Route {
        body: Some("RepairThrottle"),
        ..post(
            "/api/v1/repair/throttle",
            "Change repair's throttle",
            One("RepairStatus"),
        )
    },
    get(
        "/api/v1/rebuild-index",
        "The last index rebuild",
        One("IndexRebuildView"),
    ),
    Route {
        errors: &[409],
        ..post(
            "/api/v1/rebuild-index",
            "Rebuild the block index from the disks",
            One("IndexRebuildView"),
        )
    },
    get("/api/v1/verify", "The last verification", One("VerifyView")),
    Route {
        errors: &[409],
        ..post(
            "/api/v1/verify",
            "Walk the block index and check every block's volume",
            One("VerifyView"),
        )
    },
    Route {
        body: Some("BackupRequest"),
        errors: &[409],
        ..post(
            "/api/v1/backup",
            "A consistent copy of the metadata tier, into a new directory of the backup directory",
            One("BackupDone"),
        )
    },
    get(
        "/api/v1/rebalance",
        "Moves by state and drains",
        One("RebalanceView"),
    ),
    Route {
        query: &[Param {
            name: "tolerance",
            kind: "number",
            about: "Percentage points around the mean fill, 0 to 100 (default 10)",
        }],
        ..get(
            "/api/v1/rebalance/plan",
            "The moves that even out disk fill",
            One("RebalancePlan"),
        )
    },
    Route {
        body: Some("ApplyRequest"),
        errors: &[409, 503],
        ..post(
            "/api/v1/rebalance/apply",
            "Record the plan's moves and run them",
            One("RebalanceView"),
        )
    },
    Route {
        errors: &[409],
        ..post(
            "/api/v1/rebalance/pause",
            "Pause the moves",
            One("RebalanceView"),
        )
    },
    Route {
        errors: &[409],
        ..post(
            "/api/v1/rebalance/resume",
            "Resume the moves",
            One("RebalanceView"),
        )
    },
    Route {
        errors: &[409],
        ..post(
            "/api/v1/rebalance/cancel",
            "Drop the moves not started",
            One("RebalanceView"),
        )
    },
    Route {
        path: "/api/v1/drain",
        summary: "Move every member off a disk or a node",
        ..DRAIN
    },
    Route {
        path: "/api/v1/undrain",
        summary: "Let a draining disk or node take members again",
        answer: One("Undrained"),
        ..DRAIN
    },
    Route {
        query: &[
            Param {
                name: "pct",
                kind: "number",
                about: "Share of blocks, in percent (default 100)",
            },
            Param {
                name: "after",
                kind: "string",
                about: "Hash to start after (the last page's `next`)",
            },
            Param {
                name: "limit",
                kind: "integer",
                about: "Hashes per page, at most 100000 (default 10000)",
            },
        ],
        ..get(
            "/api/v1/blocks/sample",
            "A sample of block hashes, in index order",
            One("SamplePage"),
        )
    },
    Route {
        errors: &[404],
        ..post(
            "/api/v1/disks/{id}/declare-empty",
            "Let a held disk take new members",
            One("DeclaredEmpty"),
        )
    },
    get("/api/v1/scrub", "Scrubbing, per disk", One("ScrubView")),
    post(
        "/api/v1/scrub/start",
        "Start a pass on every disk now",
        One("ScrubView"),
    ),
    post("/api/v1/scrub/pause", "Pause scrubbing", One("ScrubView")),
    post("/api/v1/scrub/resume", "Resume scrubbing", One("ScrubView")),
    Route {
        body: Some("ScrubThrottle"),
        ..post(
            "/api/v1/scrub/throttle",
            "Change scrub's pace and schedule",
            One("ScrubView"),
        )
    },
    get(
        "/api/v1/compaction",
        "Compaction: knobs, the volume being emptied, counters",
        One("CompactionView"),
    ),
    post(
        "/api/v1/compaction/start",
        "Look for a volume to compact now (and resume)",
        One("CompactionView"),
    ),
    post(
        "/api/v1/compaction/pause",
        "Pause compaction",
        One("CompactionView"),
    ),
    post(
        "/api/v1/compaction/resume",
        "Resume compaction",
        One("CompactionView"),
    ),
    post(
        "/api/v1/compaction/cancel",
        "Give up the volume being emptied, and pause",
        One("CompactionView"),
    ),
    Route {
        body: Some("CompactionThrottle"),
        ..post(
            "/api/v1/compaction/throttle",
            "Change compaction's pace and threshold",
            One("CompactionView"),
        )
    },
    get(
        "/api/v1/trash",
        "The volume servers' trash: waiting and cleared entries, the halt",
        One("TrashView"),
    ),
    post(
        "/api/v1/trash/inspect",
        "Inspect the uncleared trash entries now",
        One("TrashView"),
    ),
    post(
        "/api/v1/trash/resume",
        "Lift a halt of trash unlinks",
        One("TrashView"),
    ),
];

#[derive(OpenApi)]
#[openapi(components(schemas(
    ApiError,
    NodeView,
    DiskView,
    MemberView,
    VolumeView,
    RangeView,
    TargetView,
    RepairTaskView,
    RepairStatus,
    ScrubDiskView,
    ScrubView,
    CellStatus,
    VerifyView,
    IndexRebuildView,
    SamplePage,
    BackupRequest,
    BackupDone,
    RepairThrottle,
    ScrubThrottle,
    CompactionView,
    CompactionCandidate,
    CompactionThrottle,
    TrashView,
    TrashEntryView,
    MoveView,
    DrainView,
    RebalanceView,
    PlannedMoveView,
    RebalancePlan,
    ApplyRequest,
    DrainRequest,
    DrainStarted,
    Undrained,
    DeclaredEmpty,
    EventView,
    ProgressView,
    WorkerView,
    WorkerRequest,
)))]
struct Components;

fn schema_ref(name: &str) -> RefOr<Schema> {
    if name == "OpenApiDocument" {
        // The description itself: an object, described by the OpenAPI specification.
        return ObjectBuilder::new()
            .schema_type(Type::Object)
            .description(Some("An OpenAPI 3.1 document"))
            .into();
    }
    RefOr::Ref(Ref::from_schema_name(name))
}

fn answer_schema(a: Answer) -> RefOr<Schema> {
    match a {
        Answer::One(n) => schema_ref(n),
        Answer::List(n) => ArrayBuilder::new().items(schema_ref(n)).into(),
    }
}

fn param_type(kind: &str) -> Type {
    match kind {
        "number" => Type::Number,
        "integer" => Type::Integer,
        _ => Type::String,
    }
}

fn status_text(code: u16) -> &'static str {
    match code {
        400 => "The request is malformed or names an impossible value",
        404 => "What the request names does not exist",
        401 => "No admin token, or one this process does not know (`Authorization: Bearer TOKEN`)",
        403 => "The token is a viewer token, and the request changes the cell",
        409 => "The request conflicts with the cell's state",
        500 => "The server failed",
        _ => "Not possible now; retry later",
    }
}

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};

/// The OpenAPI document of `routes`.
pub fn document(routes: &[Route]) -> utoipa::openapi::OpenApi {
    let mut doc = Components::openapi();
    doc.info = InfoBuilder::new()
        .title("Hoard operator API")
        .version(env!("CARGO_PKG_VERSION"))
        .description(Some(
            "JSON over HTTP on each process's admin port. Errors answer with an ApiError body.",
        ))
        .build();
    let mut paths = PathsBuilder::new();
    for r in routes {
        let mut op = OperationBuilder::new()
            .summary(Some(r.summary))
            .operation_id(Some(format!(
                "{}{}",
                r.method,
                r.path.replace(['/', '{', '}', '-', '.'], "_")
            )))
            .response(
                "200",
                ResponseBuilder::new().description("OK").content(
                    "application/json",
                    ContentBuilder::new()
                        .schema(Some(answer_schema(r.answer)))
                        .build(),
                ),
            );
        let mut codes = vec![400, 500];
        codes.extend_from_slice(r.errors);
        // Everything but this description needs a token (crate::auth).
        let open = r.path == "/api/v1/openapi.json";
        if !open {
            codes.extend_from_slice(&[401, 403]);
            op = op.security(SecurityRequirement::new("bearer", Vec::<String>::new()));
        }
        codes.sort_unstable();
        codes.dedup();
        for code in codes {
            op = op.response(
                code.to_string(),
                ResponseBuilder::new()
                    .description(status_text(code))
                    .content(
                        "application/json",
                        ContentBuilder::new()
                            .schema(Some(schema_ref("ApiError")))
                            .build(),
                    ),
            );
        }
        for p in r.query {
            op = op.parameter(
                ParameterBuilder::new()
                    .name(p.name)
                    .parameter_in(ParameterIn::Query)
                    .required(Required::False)
                    .description(Some(p.about))
                    .schema(Some(ObjectBuilder::new().schema_type(param_type(p.kind)))),
            );
        }
        if r.path.contains("{id}") {
            op = op.parameter(
                ParameterBuilder::new()
                    .name("id")
                    .parameter_in(ParameterIn::Path)
                    .required(Required::True)
                    .schema(Some(ObjectBuilder::new().schema_type(Type::String))),
            );
        }
        if let Some(body) = r.body {
            op = op.request_body(Some(
                RequestBodyBuilder::new()
                    .content(
                        "application/json",
                        ContentBuilder::new().schema(Some(schema_ref(body))).build(),
                    )
                    .build(),
            ));
        }
        let method = if r.method == "get" {
            HttpMethod::Get
        } else {
            HttpMethod::Post
        };
        paths = paths.path(r.path, PathItem::new(method, op.build()));
    }
    doc.paths = paths.build();
    if let Some(c) = doc.components.as_mut() {
        c.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
    doc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_named_schema_is_described() {
        let doc = document(&[COMMON, META].concat());
        let known = doc.components.as_ref().unwrap().schemas.clone();
        for r in COMMON.iter().chain(META) {
            let (Answer::One(n) | Answer::List(n)) = r.answer;
            for name in std::iter::once(n).chain(r.body) {
                assert!(
                    name == "OpenApiDocument" || known.contains_key(name),
                    "{} {} names schema {name}, which is not described",
                    r.method,
                    r.path
                );
            }
        }
    }

    #[test]
    fn routes_are_unique_and_all_listed() {
        let routes = [COMMON, META].concat();
        let mut seen = std::collections::HashSet::new();
        for r in &routes {
            assert!(r.path.starts_with("/api/v1/"), "{}", r.path);
            assert!(
                seen.insert((r.method, r.path)),
                "{} {} twice",
                r.method,
                r.path
            );
        }
        let doc = document(&routes);
        let ops: usize = doc
            .paths
            .paths
            .values()
            .map(|p| usize::from(p.get.is_some()) + usize::from(p.post.is_some()))
            .sum();
        assert_eq!(ops, routes.len(), "a route was lost building the paths");
    }
}
