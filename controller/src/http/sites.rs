//! `/v1/site` (this site, as a bundle for pairing) and `/v1/sites` (the paired sites, with
//! their links' state), and `/v1/plans/{name}/targets` (what each target holds of a plan).
//! Pairing is mutual: each site adds the other; until both have, their controllers refuse
//! each other's connections.

use super::*;
use crate::daemon::sites::{LinkStatus, MAX_SITES};
use crate::state::schema::{SiteRecord, TargetRecord, SITES};

/// Most controller addresses of one site.
const MAX_CONTROLLERS: usize = 16;

/// A site as pairing needs it: `GET /v1/site` gives this site's, `POST /v1/sites` takes
/// the other site's (`ferry sites export` / `ferry sites import`).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SiteBundle {
    pub name: Name,
    /// The site CA's certificate, PEM.
    #[schema(max_length = 8192)]
    pub ca_pem: String,
    /// Its controllers' agent endpoints, `HOST:PORT` (UDP).
    #[schema(min_items = 1, max_items = 16)]
    pub controllers: Vec<String>,
}

/// A paired site and how its link stands.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SiteView {
    pub name: Name,
    pub controllers: Vec<String>,
    /// RFC 3339.
    pub paired: String,
    /// BLAKE3 of its CA certificate's PEM, hex (compare with `ferry sites export` there).
    pub ca_fingerprint: String,
    pub link: LinkStatus,
}

/// A target of a plan: what it holds, and how old that is.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TargetView {
    #[serde(flatten)]
    pub record: TargetRecord,
    /// Seconds since the newest group it holds was taken here (the recovery point it
    /// offers now).
    pub lag_secs: Option<i64>,
    /// Its retention there.
    pub retention: u32,
}

fn sites_of(s: &ApiState) -> ApiResult<&Arc<crate::daemon::sites::Sites>> {
    s.sites.get().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "no_endpoint",
            "this controller has no agent endpoint ([agents] in its configuration), so it \
             cannot pair with other sites",
        )
    })
}

fn view(s: &ApiState, r: SiteRecord) -> SiteView {
    let link = s.sites.get().map(|x| x.status(&r.name)).unwrap_or_default();
    SiteView {
        ca_fingerprint: blake3::hash(r.ca_pem.as_bytes()).to_hex().to_string(),
        name: r.name,
        controllers: r.controllers,
        paired: r.paired,
        link,
    }
}

#[utoipa::path(get, path = "/v1/site", responses((status = 200, description = "this site, as another site pairs with it", body = SiteBundle)))]
pub(super) async fn this_site(
    State(s): State<Arc<ApiState>>,
    headers: HeaderMap,
) -> ApiResult<Json<SiteBundle>> {
    auth(&s, &headers, false)?;
    let sites = sites_of(&s)?;
    let mut controllers = vec![sites.advertised.clone()];
    if let Some(l) = crate::daemon::leader::current(&s.store)
        .await?
        .and_then(|l| l.endpoint)
    {
        if !controllers.contains(&l) {
            controllers.push(l);
        }
    }
    Ok(Json(SiteBundle {
        name: sites.site().clone(),
        ca_pem: sites.ca_pem().to_string(),
        controllers,
    }))
}

#[utoipa::path(get, path = "/v1/sites", params(PageQuery), responses((status = 200, description = "a page of the paired sites, by name, with reachability, round-trip time and last contact", body = Vec<SiteView>, headers(("x-next-after" = String, description = "the cursor of the next page, while more follow")))))]
pub(super) async fn list_sites(
    State(s): State<Arc<ApiState>>,
    headers: HeaderMap,
    raw: RawQuery,
) -> ApiResult<Paged<SiteView>> {
    auth(&s, &headers, false)?;
    let page = Page::new(&s, raw).await?;
    let mut p = page::stored::<SiteRecord>(&s.store, SITES, page).await?;
    let views = p.take().into_iter().map(|r| view(&s, r)).collect();
    Ok(p.with(views))
}

#[utoipa::path(get, path = "/v1/sites/{name}", params(("name" = Name, Path, description = "the site's name")), responses((status = 200, description = "a paired site", body = SiteView)))]
pub(super) async fn get_site(
    State(s): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> ApiResult<Json<SiteView>> {
    auth(&s, &headers, false)?;
    let name = name_param("site", &name)?;
    let r: SiteRecord = record(&s.store, &schema::site_key(&name))
        .await?
        .ok_or_else(|| ApiError::not_found("site", name.as_str()))?;
    Ok(Json(view(&s, r)))
}

/// Checks a bundle: a CA of the site it names, not this site, reachable addresses.
fn check_bundle(b: &SiteBundle, own: &Name) -> ApiResult<()> {
    if b.name == *own {
        return Err(ApiError::bad(format!(
            "name: {own} is this site; pair with the other site's bundle (ferry sites export there)"
        )));
    }
    if b.ca_pem.len() > ferry_wire::control::MAX_CA_PEM {
        return Err(ApiError::bad("ca_pem: at most 8 KiB"));
    }
    let mut t = ferry_net::pki::Trust::default();
    t.add_pem(&b.ca_pem, Some(&b.name)).map_err(|e| {
        ApiError::bad(format!(
            "ca_pem: {e} (give the ca.pem of site {}'s CA)",
            b.name
        ))
    })?;
    if b.controllers.is_empty() || b.controllers.len() > MAX_CONTROLLERS {
        return Err(ApiError::bad(format!(
            "controllers: 1 to {MAX_CONTROLLERS} addresses of the site's controllers (HOST:PORT)"
        )));
    }
    for (i, c) in b.controllers.iter().enumerate() {
        let ok = c.len() <= 255
            && c.rsplit_once(':').is_some_and(|(h, p)| {
                !h.is_empty()
                    && p.parse::<u16>().is_ok_and(|p| p > 0)
                    && !h.contains(char::is_whitespace)
            });
        if !ok {
            return Err(ApiError::bad(format!(
                "controllers[{i}]: {c:?} is not HOST:PORT"
            )));
        }
    }
    Ok(())
}

#[utoipa::path(post, path = "/v1/sites", request_body = SiteBundle, responses((status = 201, description = "paired (the other site must pair with this one too)", body = SiteView)))]
pub(super) async fn add_site(
    State(s): State<Arc<ApiState>>,
    headers: HeaderMap,
    raw: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> ApiResult<(StatusCode, Json<SiteView>)> {
    auth(&s, &headers, true)?;
    let b: SiteBundle = parse(&body(raw)?)?;
    let own = sites_of(&s)?.site().clone();
    check_bundle(&b, &own)?;
    if s.store.list(SITES).await?.len() >= MAX_SITES {
        return Err(ApiError::conflict(format!(
            "this site is paired with {MAX_SITES} sites already, the most it can be"
        )));
    }
    let rec = SiteRecord {
        name: b.name.clone(),
        ca_pem: b.ca_pem,
        controllers: b.controllers,
        paired: jiff::Timestamp::now().to_string(),
    };
    let key = schema::site_key(&rec.name);
    let done = s
        .store
        .txn(Txn {
            when: vec![Compare::Absent(key.clone())],
            then: vec![Op::Put(key, encode(&rec)?)],
        })
        .await?;
    if !done.succeeded {
        return Err(ApiError::conflict(format!(
            "site {} is paired already; to change it, remove it (ferry sites remove {}) and add it again",
            rec.name, rec.name
        )));
    }
    tracing::info!(site = %rec.name, controllers = ?rec.controllers, "site paired");
    Ok((StatusCode::CREATED, Json(view(&s, rec))))
}

#[utoipa::path(delete, path = "/v1/sites/{name}", params(("name" = Name, Path, description = "the site's name")), responses((status = 204, description = "unpaired"), (status = 409, description = "a plan targets it")))]
pub(super) async fn remove_site(
    State(s): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    auth(&s, &headers, true)?;
    let name = name_param("site", &name)?;
    let key = schema::site_key(&name);
    let Some(kv) = s.store.get(&key).await? else {
        return Err(ApiError::not_found("site", name.as_str()));
    };
    let plans: Vec<PlanRecord> = crate::state::load(&s.store, PLANS).await?;
    let users: Vec<String> = plans
        .iter()
        .filter(|p| {
            p.spec.targets.iter().any(|t| t.site == name)
                || p.origin.as_ref().is_some_and(|o| o.site == name)
        })
        .map(|p| p.spec.name.to_string())
        .collect();
    if !users.is_empty() {
        return Err(ApiError::conflict(format!(
            "site {name} is in use by plan{} {}: remove it from their targets (or release the \
             foreign plans it owns here) first",
            if users.len() == 1 { "" } else { "s" },
            users.join(", ")
        )));
    }
    let done = s
        .store
        .txn(Txn {
            when: vec![Compare::ModRevision(key.clone(), kv.mod_revision)],
            then: vec![Op::Delete(key)],
        })
        .await?;
    if !done.succeeded {
        return Err(ApiError::conflict(format!(
            "site {name} changed meanwhile; try again"
        )));
    }
    tracing::info!(site = %name, "site unpaired");
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/v1/plans/{name}/targets", params(("name" = Name, Path, description = "the plan's name")), responses((status = 200, description = "each target site of the plan: the newest group it holds, its age, bytes sent, failures", body = Vec<TargetView>)))]
pub(super) async fn plan_targets(
    State(s): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> ApiResult<Json<Vec<TargetView>>> {
    auth(&s, &headers, false)?;
    let name = name_param("plan", &name)?;
    let (plan, _) = read_plan(&s.store, &name).await?;
    let now = jiff::Timestamp::now();
    let mut out = Vec::new();
    for t in &plan.spec.targets {
        let rec: TargetRecord = record(&s.store, &schema::target_key(plan.id(), &t.site))
            .await?
            .unwrap_or_else(|| TargetRecord::new(t.site.clone()));
        let lag_secs = rec
            .last_group_created
            .as_deref()
            .and_then(|c| c.parse::<jiff::Timestamp>().ok())
            .map(|c| now.as_second() - c.as_second());
        out.push(TargetView {
            record: rec,
            lag_secs,
            retention: t.retention,
        });
    }
    Ok(Json(out))
}

#[utoipa::path(get, path = "/v1/plans/{name}/mirrors", params(("name" = Name, Path, description = "the foreign plan's name"), PageQuery), responses((status = 200, description = "a page of a foreign plan's mirror objects, by name: the source's objects with their volumes on the mirrors here and their NICs on the mapped switches", body = Vec<Object>, headers(("x-next-after" = String, description = "the cursor of the next page, while more follow")))))]
pub(super) async fn plan_mirrors(
    State(s): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path(name): Path<String>,
    raw: RawQuery,
) -> ApiResult<Paged<Object>> {
    auth(&s, &headers, false)?;
    let name = name_param("plan", &name)?;
    let (plan, _) = read_plan(&s.store, &name).await?;
    let page = Page::new(&s, raw).await?;
    page::stored::<Object>(&s.store, &schema::mirrors_of(plan.id()), page).await
}
