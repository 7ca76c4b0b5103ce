//! The OpenAPI document (`/v1/openapi.json`), derived from the types the handlers take and
//! give (utoipa): each handler's `#[utoipa::path]` says its route, parameters, body and
//! answers; each type's `ToSchema` its fields, limits and patterns. Here they are put
//! together, with what every `/v1` answer may also be: the errors, in one shape.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{RefOr, Response, ResponseBuilder};
use utoipa::{Modify, OpenApi};

use super::*;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "ferry controller API",
        version = "1",
        description = "Protection and backup plans, inventory objects, runs, snapshot groups, rollbacks, rebuilds, drills and verifications, agents and volumes of one site, and the sites it is paired with."
    ),
    paths(
        healthz,
        openapi,
        metrics::metrics,
        status::status,
        objects::list_objects,
        objects::create_object,
        objects::get_object,
        objects::put_object,
        objects::delete_object,
        plans::list_plans,
        plans::create_plan,
        plans::get_plan,
        plans::put_plan,
        plans::delete_plan,
        plans::pause_plan,
        plans::resume_plan,
        runs::run_now,
        runs::plan_runs,
        runs::get_run,
        runs::all_runs,
        groups::plan_groups,
        groups::get_group,
        rollbacks::plan_rollbacks,
        rollbacks::start_rollback,
        rollbacks::get_rollback,
        orphans::list_orphans,
        orphans::delete_orphans,
        agents::list_agents,
        agents::list_volumes,
        agents::node_volumes,
        agents::create_volume,
        agents::delete_volume,
        sites::this_site,
        sites::list_sites,
        sites::get_site,
        sites::add_site,
        sites::remove_site,
        sites::plan_targets,
        sites::plan_mirrors,
        recoveries::start_rebuild,
        recoveries::plan_rebuilds,
        recoveries::get_rebuild,
        recoveries::start_drill,
        recoveries::plan_drills,
        recoveries::get_drill,
        recoveries::start_verify,
        recoveries::plan_verifications,
        recoveries::get_verification,
    ),
    components(schemas(ErrorBody)),
    security(("bearer" = [])),
    modifiers(&Common)
)]
struct Doc;

/// The bearer scheme, and the errors every operation but the document itself may answer.
struct Common;

impl Modify for Common {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        let error = |description: &str| -> RefOr<Response> {
            ResponseBuilder::new()
                .description(description)
                .content(
                    "application/json",
                    utoipa::openapi::ContentBuilder::new()
                        .schema(Some(utoipa::openapi::Ref::from_schema_name("ErrorBody")))
                        .build(),
                )
                .build()
                .into()
        };
        let errors = [
            (
                "400",
                "invalid request: the message names the field and the problem",
            ),
            ("401", "missing or unknown bearer token"),
            ("403", "the token is read-only"),
            ("404", "not found"),
            (
                "409",
                "conflict: exists, in use, in progress, or changed meanwhile",
            ),
            ("413", "request body too large"),
            (
                "503",
                "the state store is unavailable, or no leader is elected",
            ),
        ];
        for (path, item) in doc.paths.paths.iter_mut() {
            if path == "/v1/openapi.json" {
                continue;
            }
            let ops = [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
            ];
            for op in ops.into_iter().flatten() {
                for (code, d) in errors {
                    op.responses
                        .responses
                        .entry(code.to_string())
                        .or_insert_with(|| error(d));
                }
            }
        }
    }
}

/// The document.
pub fn document() -> utoipa::openapi::OpenApi {
    Doc::openapi()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_is_documented_with_its_limits() {
        let doc = serde_json::to_value(document()).expect("json");
        let paths = doc["paths"].as_object().expect("paths");
        // Every route the router serves (read from its source) is in the document.
        let router = include_str!("mod.rs");
        let routes: Vec<&str> = router
            .split(".route(")
            .skip(1)
            .filter_map(|r| r.split('"').nth(1))
            .collect();
        assert!(routes.len() >= 20, "{routes:?}");
        for r in &routes {
            assert!(paths.contains_key(*r), "{r} is served but not documented");
        }
        assert_eq!(
            paths.len(),
            routes.len(),
            "documented but not served: {:?}",
            paths.keys()
        );
        let name = &doc["components"]["schemas"]["Name"];
        assert_eq!(name["pattern"], ferry_wire::name::PATTERN, "{name}");
        assert_eq!(name["maxLength"], 128);
        let plan = &doc["components"]["schemas"]["PlanSpec"]["properties"];
        assert_eq!(plan["retention"]["maximum"], 10000, "{plan}");
        let get = &doc["paths"]["/v1/plans/{name}"]["get"]["responses"];
        assert!(get["404"].is_object() && get["200"].is_object(), "{get}");
    }
}
