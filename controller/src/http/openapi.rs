//! The OpenAPI 3.0 document of the HTTP API, served at `/v1/openapi.json`. A test checks that
//! every route the router serves is described here.

use serde_json::{json, Value};

fn error_response(description: &str) -> Value {
    json!({ "description": description,
            "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } } })
}

fn body(schema: &str) -> Value {
    json!({ "required": true,
            "content": { "application/json": { "schema": { "$ref": format!("#/components/schemas/{schema}") } } } })
}

fn ok(description: &str, schema: Value) -> Value {
    json!({ "description": description, "content": { "application/json": { "schema": schema } } })
}

fn reference(name: &str) -> Value {
    json!({ "$ref": format!("#/components/schemas/{name}") })
}

/// The document.
pub fn document() -> Value {
    let errors = |mut v: Value| {
        for (code, d) in [
            (
                "400",
                "invalid request: the message names the field and the problem",
            ),
            ("401", "missing or unknown bearer token"),
            ("403", "the token is read-only"),
            ("404", "not found"),
            ("409", "conflict: exists, in use, or changed meanwhile"),
            ("413", "request body too large"),
            ("503", "the state store is unavailable"),
        ] {
            v[code] = error_response(d);
        }
        v
    };
    let path_param = |param: &str, what: &str| {
        json!({ "name": param, "in": "path", "required": true,
                "description": format!("the {what}'s name"),
                "schema": reference("Name") })
    };
    let name_param = |what: &str| json!([path_param("name", what)]);
    let allow_missing = json!({ "name": "allow_missing", "in": "query", "required": false,
        "description": "declare the object before its agent or volumes exist", "schema": { "type": "boolean" } });
    let run_detail = json!({ "allOf": [ reference("Run"), { "type": "object", "required": ["report"], "properties": {
                    "report": { "type": "object", "required": ["objects", "bytes_read"], "properties": {
                        "bytes_read": { "type": "integer", "description": "bytes the snapshots' manifests read (the changed data)" },
                        "duration_secs": { "type": "number", "nullable": true },
                        "objects": { "type": "array", "items": { "type": "object", "properties": {
                            "name": { "type": "string" },
                            "status": { "type": "string", "enum": ["pending", "done", "failed", "undone"] },
                            "volumes": { "type": "array", "items": { "type": "object", "properties": {
                                "node": { "type": "string" }, "volume": { "type": "string" },
                                "status": { "type": "string" }, "finished": { "type": "string" }, "error": { "type": "string" },
                                "snapshot": { "type": "object", "description": "volume, snapshot, size, root, bytes_read, manifest_ms" } } } } } } } } } } } ] });
    json!({
        "openapi": "3.0.3",
        "info": { "title": "ferry controller API", "version": "1",
                  "description": "Protection plans, inventory objects, runs and snapshot groups of one site." },
        "components": {
            "securitySchemes": { "bearer": { "type": "http", "scheme": "bearer" } },
            "schemas": {
                "Name": { "type": "string", "minLength": 1, "maxLength": 128, "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]*$",
                    "description": "a name: 1-128 of [A-Za-z0-9._-], starting with a letter or digit; never a path" },
                "Error": { "type": "object", "required": ["error"], "properties": {
                    "error": { "type": "object", "required": ["code", "message"], "properties": {
                        "code": { "type": "string" }, "message": { "type": "string" } } } } },
                "VolumeRef": { "type": "object", "required": ["node", "volume"], "properties": {
                    "node": reference("Name"), "volume": reference("Name") } },
                "Object": { "type": "object", "required": ["name", "kind"], "additionalProperties": false, "properties": {
                    "name": reference("Name"),
                    "kind": { "oneOf": [reference("VirtualVolume"), reference("IscsiLun"), reference("NfsFile"), reference("Vm")],
                              "discriminator": { "propertyName": "type", "mapping": {
                                  "virtual_volume": "#/components/schemas/VirtualVolume", "iscsi_lun": "#/components/schemas/IscsiLun",
                                  "nfs_file": "#/components/schemas/NfsFile", "vm": "#/components/schemas/Vm" } } } } },
                "VirtualVolume": { "type": "object", "required": ["type", "volume"], "additionalProperties": false, "properties": {
                    "type": { "type": "string", "enum": ["virtual_volume"] }, "volume": reference("VolumeRef") } },
                "IscsiLun": { "type": "object", "required": ["type", "target_iqn", "lun", "volume"], "additionalProperties": false, "properties": {
                    "type": { "type": "string", "enum": ["iscsi_lun"] },
                    "target_iqn": { "type": "string", "maxLength": 223, "pattern": "^iqn\\.[0-9]{4}-(0[1-9]|1[0-2])\\.[a-z0-9][a-z0-9.-]*(:[a-z0-9.:-]*)?$",
                                    "example": "iqn.2026-11.com.example:db" },
                    "lun": { "type": "integer", "minimum": 0, "maximum": 16383 },
                    "volume": reference("VolumeRef") } },
                "NfsFile": { "type": "object", "required": ["type", "export", "path", "volume"], "additionalProperties": false, "properties": {
                    "type": { "type": "string", "enum": ["nfs_file"] },
                    "export": { "type": "string", "description": "the export's absolute path, without . or ..", "example": "/srv/nfs/vms" },
                    "path": { "type": "string", "description": "the file's path within the export, relative, without . or ..", "example": "web/disk0.img" },
                    "volume": reference("VolumeRef") } },
                "Vm": { "type": "object", "required": ["type", "vcpus", "memory_mib", "disks"], "additionalProperties": false, "properties": {
                    "type": { "type": "string", "enum": ["vm"] },
                    "vcpus": { "type": "integer", "minimum": 1, "maximum": 1024 },
                    "memory_mib": { "type": "integer", "minimum": 16, "maximum": 67108864 },
                    "disks": { "type": "array", "minItems": 1, "description": "at least one of role disk; cdrom and shared disks are not protected",
                        "items": { "type": "object", "required": ["volume"], "additionalProperties": false, "properties": {
                            "volume": reference("VolumeRef"), "role": { "type": "string", "enum": ["disk", "cdrom", "shared"], "default": "disk" } } } },
                    "nics": { "type": "array", "items": { "type": "object", "required": ["switch"], "additionalProperties": false, "properties": {
                        "switch": reference("Name"), "mac": { "type": "string", "nullable": true, "pattern": "^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$" } } } } } },
                "Schedule": { "type": "object", "required": ["every", "start"], "additionalProperties": false, "properties": {
                    "every": { "type": "string", "enum": ["hourly", "daily", "weekly", "monthly"] },
                    "start": { "type": "string", "example": "2026-11-24T02:30", "description": "wall-clock time in the time zone, YYYY-MM-DDTHH:MM" },
                    "timezone": { "type": "string", "example": "Europe/Berlin", "default": "UTC" },
                    "end": { "type": "string", "nullable": true } } },
                "PlanSpec": { "type": "object", "required": ["name", "objects", "schedule", "retention"], "properties": {
                    "name": reference("Name"),
                    "objects": { "type": "array", "minItems": 1, "maxItems": 1024, "items": reference("Name") },
                    "schedule": reference("Schedule"),
                    "retention": { "type": "integer", "minimum": 1, "maximum": 10000 },
                    "enabled": { "type": "boolean", "default": true },
                    "hooks": { "type": "object", "properties": {
                        "pre": { "type": "string", "nullable": true }, "post": { "type": "string", "nullable": true },
                        "timeout_secs": { "type": "integer", "nullable": true, "minimum": 1, "maximum": 3600 },
                        "deadline_secs": { "type": "integer", "nullable": true, "minimum": 1, "maximum": 3600, "default": 60,
                            "description": "volumes on several nodes with a pre hook: every node must be prepared (pre hook run) within this; a node not released this long after its pre hook releases itself" } } } } },
                "Run": { "type": "object", "required": ["run", "trigger", "created"], "properties": {
                    "run": { "type": "object", "description": "id, plan, group (the snapshot name), generation, step (prepare, snapshot, compensate, prune, done, failed), coordinated (prepare / snapshot / release across nodes), nodes (per node: volumes, state, finished), error, finished" },
                    "trigger": { "type": "string", "enum": ["schedule", "manual"] },
                    "slot": { "type": "string", "nullable": true },
                    "created": { "type": "string" },
                    "objects": { "type": "array", "description": "the plan's objects at the run, with their volumes",
                        "items": { "type": "object", "properties": { "name": { "type": "string" }, "volumes": { "type": "array", "items": reference("VolumeRef") } } } } } },
                "RunDetail": run_detail,
                "Plan": { "type": "object", "required": ["spec", "paused"], "properties": {
                    "id": { "allOf": [reference("Name")], "description": "unique to this plan's life: its runs and groups are kept under it" },
                    "spec": reference("PlanSpec"), "paused": { "type": "boolean" },
                    "next_run": { "type": "string", "nullable": true } } },
                "Group": { "type": "object", "required": ["plan", "group", "run", "created", "snapshots"], "properties": {
                    "plan": reference("Name"), "plan_id": reference("Name"), "group": reference("Name"), "run": reference("Name"),
                    "created": { "type": "string" },
                    "snapshots": { "type": "array", "description": "[node, snapshot] pairs", "items": { "type": "array" } },
                    "objects": { "type": "array", "items": { "type": "object" } } } },
                "GroupJob": { "type": "object", "required": ["id", "plan", "group", "step", "volumes", "created"], "properties": {
                    "id": reference("Name"), "plan": reference("Name"), "plan_id": reference("Name"), "group": reference("Name"),
                    "action": { "type": "string", "enum": ["rollback", "delete"] },
                    "generation": { "type": "integer" },
                    "step": { "type": "string", "enum": ["running", "done", "failed"] },
                    "volumes": { "type": "object", "description": "node -> volume -> pending, done or {failed: {message}}" },
                    "created": { "type": "string" }, "finished": { "type": "string", "nullable": true },
                    "progress": reference("Progress") } },
                "Progress": { "type": "object", "description": "while it runs: bytes its tasks have done of what they expect",
                    "properties": { "done_bytes": { "type": "integer" }, "total_bytes": { "type": "integer" } } },
                "Volume": { "type": "object", "required": ["node", "name", "size", "snapshots", "mirror", "used_by"], "properties": {
                    "node": reference("Name"), "name": reference("Name"), "size": { "type": "integer" },
                    "snapshots": { "type": "integer" }, "mirror": { "type": "boolean" },
                    "used_by": { "type": "array", "items": reference("Name"), "description": "the objects that name it" } } },
                "Orphan": { "type": "object", "required": ["plan", "plan_id", "deleted", "fate", "groups"], "properties": {
                    "plan": reference("Name"), "plan_id": reference("Name"), "deleted": { "type": "string" },
                    "fate": { "type": "string", "enum": ["keep", "delete"] },
                    "groups": { "type": "array", "items": reference("Group") },
                    "removing": reference("Name") } }
            }
        },
        "security": [ { "bearer": [] } ],
        "paths": {
            "/healthz": { "get": { "summary": "liveness and store reachability", "security": [],
                "responses": errors(json!({ "200": ok("healthy", json!({ "type": "object" })) })) } },
            "/metrics": { "get": { "summary": "Prometheus metrics: requests, plans, objects, runs by plan and step, last success, last run's duration and bytes per plan, store revision",
                "responses": errors(json!({ "200": { "description": "text exposition format", "content": { "text/plain": { "schema": { "type": "string" } } } } })) } },
            "/v1/openapi.json": { "get": { "summary": "this document", "security": [],
                "responses": { "200": ok("the document", json!({ "type": "object" })) } } },
            "/v1/objects": {
                "get": { "summary": "list objects", "responses": errors(json!({ "200": ok("objects", json!({ "type": "array", "items": reference("Object") })) })) },
                "post": { "summary": "create an object; every volume it names must be on a registered agent unless allow_missing", "requestBody": body("Object"),
                          "parameters": [allow_missing],
                          "responses": errors(json!({ "201": ok("created", reference("Object")) })) } },
            "/v1/objects/{name}": {
                "parameters": name_param("object"),
                "get": { "summary": "one object", "responses": errors(json!({ "200": ok("the object", reference("Object")) })) },
                "put": { "summary": "replace an object", "requestBody": body("Object"),
                         "parameters": [allow_missing],
                         "responses": errors(json!({ "200": ok("replaced", reference("Object")) })) },
                "delete": { "summary": "delete an object no plan uses", "responses": errors(json!({ "204": { "description": "deleted" } })) } },
            "/v1/plans": {
                "get": { "summary": "list plans", "responses": errors(json!({ "200": ok("plans", json!({ "type": "array", "items": reference("Plan") })) })) },
                "post": { "summary": "create a plan", "requestBody": body("PlanSpec"),
                          "responses": errors(json!({ "201": ok("created", reference("Plan")) })) } },
            "/v1/plans/{name}": {
                "parameters": name_param("plan"),
                "get": { "summary": "one plan, with its next run", "responses": errors(json!({ "200": ok("the plan", reference("Plan")) })) },
                "put": { "summary": "replace a plan's spec", "requestBody": body("PlanSpec"),
                         "responses": errors(json!({ "200": ok("replaced", reference("Plan")) })) },
                "delete": { "summary": "delete a plan; one that keeps groups needs groups=keep (kept as orphaned groups) or groups=delete (deleted with their snapshots)",
                    "parameters": [{ "name": "groups", "in": "query", "required": false, "schema": { "type": "string", "enum": ["keep", "delete"] } }],
                    "responses": errors(json!({ "204": { "description": "deleted" } })) } },
            "/v1/plans/{name}/pause": { "parameters": name_param("plan"),
                "post": { "summary": "pause a plan's schedule", "responses": errors(json!({ "200": ok("paused", reference("Plan")) })) } },
            "/v1/plans/{name}/resume": { "parameters": name_param("plan"),
                "post": { "summary": "resume a plan's schedule", "responses": errors(json!({ "200": ok("resumed", reference("Plan")) })) } },
            "/v1/plans/{name}/run": { "parameters": name_param("plan"),
                "post": { "summary": "start a run now, outside the schedule", "responses": errors(json!({ "202": ok("the run", reference("Run")) })) } },
            "/v1/plans/{name}/runs": { "parameters": name_param("plan"),
                "get": { "summary": "the plan's runs, oldest first", "responses": errors(json!({ "200": ok("runs", json!({ "type": "array", "items": reference("Run") })) })) } },
            "/v1/plans/{name}/runs/{run}": {
                "parameters": [path_param("name", "plan"), path_param("run", "run")],
                "get": { "summary": "one run, with its status, timings, bytes and errors per object and volume, and its progress while it runs", "responses": errors(json!({ "200": ok("the run", reference("RunDetail")) })) } },
            "/v1/plans/{name}/groups/{group}": {
                "parameters": [path_param("name", "plan"), path_param("group", "group")],
                "get": { "summary": "one kept snapshot group: its snapshots per node and the objects they cover", "responses": errors(json!({ "200": ok("the group", reference("Group")) })) } },
            "/v1/plans/{name}/groups": { "parameters": name_param("plan"),
                "get": { "summary": "the plan's kept snapshot groups, oldest first", "responses": errors(json!({ "200": ok("groups", json!({ "type": "array", "items": reference("Group") })) })) } },
            "/v1/plans/{name}/rollbacks": { "parameters": name_param("plan"),
                "get": { "summary": "the plan's rollbacks, oldest first", "responses": errors(json!({ "200": ok("rollbacks", json!({ "type": "array", "items": reference("GroupJob") })) })) },
                "post": { "summary": "roll the plan's objects (or some: objects) back to a kept group; only volumes the plan protects now are touched; refused while a run, rollback or removal of the plan is in progress",
                          "requestBody": { "required": true, "content": { "application/json": { "schema": { "type": "object", "required": ["group"], "properties": {
                              "group": reference("Name"), "objects": { "type": "array", "items": reference("Name") } } } } } },
                          "responses": errors(json!({ "202": ok("the rollback", reference("GroupJob")) })) } },
            "/v1/plans/{name}/rollbacks/{id}": {
                "parameters": [path_param("name", "plan"), path_param("id", "rollback")],
                "get": { "summary": "one rollback, with its progress while it runs", "responses": errors(json!({ "200": ok("the rollback", reference("GroupJob")) })) } },
            "/v1/status": {
                "get": { "summary": "the site at a glance: every plan's last run, last success, newest group and its age, what is in progress, the latest failure; the agents",
                         "responses": errors(json!({ "200": ok("the status", json!({ "type": "object", "required": ["now", "plans", "agents"], "properties": {
                             "now": { "type": "string" }, "plans": { "type": "array", "items": { "type": "object" } },
                             "agents": { "type": "array", "items": { "type": "object" } },
                             "deleted_plans_with_leftovers": { "type": "integer" } } })) })) } },
            "/v1/orphans": {
                "get": { "summary": "deleted plans whose groups are kept, with those groups", "responses": errors(json!({ "200": ok("orphans", json!({ "type": "array", "items": reference("Orphan") })) })) } },
            "/v1/orphans/{plan_id}": {
                "parameters": [{ "name": "plan_id", "in": "path", "required": true, "description": "the deleted plan's id", "schema": reference("Name") }],
                "delete": { "summary": "delete a deleted plan's kept groups, snapshots included (the executor deletes them group by group)",
                            "responses": errors(json!({ "202": ok("deleting", json!({ "type": "object" })) })) } },
            "/v1/volumes": {
                "get": { "summary": "every agent's volumes, with the objects that name them", "responses": errors(json!({ "200": ok("volumes", json!({ "type": "array", "items": reference("Volume") })) })) } },
            "/v1/agents": {
                "get": { "summary": "this site's agents: node, status (up/down), volumes, capacity, free space, last heartbeat", "responses": errors(json!({ "200": ok("agents", json!({ "type": "array", "items": { "type": "object" } })) })) } },
            "/v1/agents/{node}/volumes": {
                "parameters": [path_param("node", "agent's node")],
                "get": { "summary": "one agent's volumes", "responses": errors(json!({ "200": ok("volumes", json!({ "type": "array", "items": reference("Volume") })) })) },
                "post": { "summary": "create a volume on a connected agent (answered when the agent reports)",
                          "requestBody": { "required": true, "content": { "application/json": { "schema": { "type": "object", "required": ["name", "size"], "properties": {
                              "name": reference("Name"), "size": { "description": "bytes, or a size: 10G and 10GiB are binary, 10GB decimal, 1.5T allowed" }, "block_size": { "type": "integer" } } } } } },
                          "responses": errors(json!({ "201": ok("created", json!({ "type": "object" })), "502": error_response("the agent failed"), "504": error_response("the agent did not answer"), "507": error_response("no space on the agent") })) } },
            "/v1/agents/{node}/volumes/{volume}": {
                "parameters": [path_param("node", "agent's node"), path_param("volume", "volume")],
                "delete": { "summary": "delete a volume no object names; one with snapshots needs force=true",
                            "parameters": [{ "name": "force", "in": "query", "required": false, "schema": { "type": "boolean" } }],
                            "responses": errors(json!({ "200": ok("deleted", json!({ "type": "object" })), "502": error_response("the agent failed"), "504": error_response("the agent did not answer") })) } },
            "/v1/runs": {
                "get": { "summary": "every run, oldest first", "responses": errors(json!({ "200": ok("runs", json!({ "type": "array", "items": reference("Run") })) })) } }
        }
    })
}
