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
                    "spec": reference("PlanSpec"), "paused": { "type": "boolean" },
                    "next_run": { "type": "string", "nullable": true } } }
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
                "post": { "summary": "create an object", "requestBody": body("Object"),
                          "responses": errors(json!({ "201": ok("created", reference("Object")) })) } },
            "/v1/objects/{name}": {
                "parameters": name_param("object"),
                "get": { "summary": "one object", "responses": errors(json!({ "200": ok("the object", reference("Object")) })) },
                "put": { "summary": "replace an object", "requestBody": body("Object"),
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
                "delete": { "summary": "delete a plan", "responses": errors(json!({ "204": { "description": "deleted" } })) } },
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
                "get": { "summary": "one run, with its status, timings, bytes and errors per object and volume", "responses": errors(json!({ "200": ok("the run", reference("RunDetail")) })) } },
            "/v1/plans/{name}/groups/{group}": {
                "parameters": [path_param("name", "plan"), path_param("group", "group")],
                "get": { "summary": "one kept snapshot group: its snapshots per node and the objects they cover", "responses": errors(json!({ "200": ok("the group", json!({ "type": "object" })) })) } },
            "/v1/plans/{name}/groups": { "parameters": name_param("plan"),
                "get": { "summary": "the plan's kept snapshot groups, oldest first (plan, group, run, created, snapshots per node)", "responses": errors(json!({ "200": ok("groups", json!({ "type": "array", "items": { "type": "object" } })) })) } },
            "/v1/plans/{name}/rollbacks": { "parameters": name_param("plan"),
                "get": { "summary": "the plan's rollbacks, oldest first", "responses": errors(json!({ "200": ok("rollbacks", json!({ "type": "array", "items": { "type": "object" } })) })) },
                "post": { "summary": "roll the plan's objects (or some: objects) back to a kept group; refused while a run is in progress",
                          "requestBody": { "required": true, "content": { "application/json": { "schema": { "type": "object", "required": ["group"], "properties": {
                              "group": reference("Name"), "objects": { "type": "array", "items": reference("Name") } } } } } },
                          "responses": errors(json!({ "202": ok("the rollback", json!({ "type": "object" })) })) } },
            "/v1/agents": {
                "get": { "summary": "this site's agents: node, status (up/down), volumes, capacity, free space, last heartbeat", "responses": errors(json!({ "200": ok("agents", json!({ "type": "array", "items": { "type": "object" } })) })) } },
            "/v1/agents/{node}/volumes": {
                "parameters": [path_param("node", "agent's node")],
                "post": { "summary": "create a volume on a connected agent (answered when the agent reports)",
                          "requestBody": { "required": true, "content": { "application/json": { "schema": { "type": "object", "required": ["name", "size"], "properties": {
                              "name": reference("Name"), "size": { "description": "bytes, or a size such as 10G" }, "block_size": { "type": "integer" } } } } } },
                          "responses": errors(json!({ "201": ok("created", json!({ "type": "object" })), "502": error_response("the agent failed"), "504": error_response("the agent did not answer"), "507": error_response("no space on the agent") })) } },
            "/v1/runs": {
                "get": { "summary": "every run, oldest first", "responses": errors(json!({ "200": ok("runs", json!({ "type": "array", "items": reference("Run") })) })) } }
        }
    })
}
