//! Sign up, log in, log out, and personal access tokens.

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Redirect};
use http::{HeaderValue, StatusCode, header};
use serde::Deserialize;

use super::pages::{AccountPage, AdminPage, TokenRow, TokensPage, UserRow};
use super::{
    CsrfForm, NameForm, Post, SESSION_COOKIE, SESSION_TTL_MS, Viewer, WebError, WebResult, render,
    render_status,
};
use crate::AppState;
use crate::auth;
use crate::db::User;
use crate::git::format_time;
use crate::names;

#[derive(Deserialize, Default)]
#[serde(default)]
pub(super) struct CredentialsForm {
    csrf: String,
    username: String,
    password: String,
    /// Where to go after logging in (a path on this site).
    next: String,
}

fn account_page(
    v: &Viewer,
    signup: bool,
    username: &str,
    next: &str,
    error: Option<String>,
) -> AccountPage {
    AccountPage {
        title: if signup { "Sign up" } else { "Log in" }.into(),
        nav: v.nav(),
        action: if signup { "/signup" } else { "/login" },
        signup,
        username: username.to_owned(),
        next: if super::safe_return_to(next) {
            next.to_owned()
        } else {
            String::new()
        },
        error,
    }
}

const SIGNUP_CLOSED: &str = "Sign-up is closed on this repohub: ask an administrator for an account \
     (they create it with `repohub admin create-user`).";

pub(super) async fn signup_form(State(st): State<AppState>, v: Viewer) -> WebResult {
    if v.user.is_some() {
        return Ok(Redirect::to("/").into_response());
    }
    if !st.open_signup {
        return Err(WebError::Forbidden(SIGNUP_CLOSED.into()));
    }
    render(&account_page(&v, true, "", "", None))
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub(super) struct NextQuery {
    next: String,
}

pub(super) async fn login_form(
    v: Viewer,
    axum::extract::Query(q): axum::extract::Query<NextQuery>,
) -> WebResult {
    if v.user.is_some() {
        // Already logged in (another tab did it): go where the link meant to.
        let to = if super::safe_return_to(&q.next) {
            q.next.as_str()
        } else {
            "/"
        };
        return Ok(Redirect::to(to).into_response());
    }
    render(&account_page(&v, false, "", &q.next, None))
}

/// Starts a session and redirects to `next` (home when it is not a path on
/// this site) with the cookie set.
fn logged_in(st: &AppState, user: &User, next: &str) -> WebResult {
    let token = auth::new_token()?;
    st.db
        .create_session(&auth::sha256_hex(&token), user.id, SESSION_TTL_MS)?;
    let to = if super::safe_return_to(next) {
        next
    } else {
        "/"
    };
    let mut resp = Redirect::to(to).into_response();
    let cookie = super::session_cookie(&token, st.secure_cookies);
    resp.headers_mut().append(
        header::SET_COOKIE,
        HeaderValue::from_str(&cookie).map_err(|e| WebError::Internal(e.to_string()))?,
    );
    Ok(resp)
}

pub(super) async fn signup(Post { st, v, form: f }: Post<CredentialsForm>) -> WebResult {
    if !st.open_signup {
        return Err(WebError::Forbidden(SIGNUP_CLOSED.into()));
    }
    v.check_csrf(&f.csrf)?;
    st.login_limiter.attempt(v.ip, &f.username)?;
    // A signup takes the name's token too: creating names in a loop is
    // slowed like guessing a password.
    st.login_limiter.failed(&f.username);
    let fail = |msg: String| {
        render_status(
            StatusCode::BAD_REQUEST,
            &account_page(&v, true, &f.username, "", Some(msg)),
        )
    };
    if let Err(e) = names::validate_name(&f.username) {
        return fail(e.to_string());
    }
    // The configured admin's account is made by the operator, never taken
    // by whoever signs up first.
    if st.admin.as_deref() == Some(f.username.as_str()) {
        return fail("that name is taken".into());
    }
    if let Err(e) = auth::check_password(&f.password) {
        return fail(e.to_string());
    }
    let kdf = st.kdf;
    let pw = f.password.clone();
    let hash = st
        .argon2_pool
        .run(move || auth::hash_password(&kdf, &pw))
        .await??;
    let user =
        match st
            .db
            .create_user_with(&f.username, &hash, false, st.signup_may_create_projects)
        {
            Ok(u) => u,
            Err(crate::db::DbError::Conflict(_)) => return fail("that name is taken".into()),
            Err(e) => return Err(e.into()),
        };
    tracing::info!(user = %user.name, "user signed up");
    logged_in(&st, &user, "")
}

pub(super) async fn login(Post { st, v, form: f }: Post<CredentialsForm>) -> WebResult {
    v.check_csrf(&f.csrf)?;
    st.login_limiter.attempt(v.ip, &f.username)?;
    let found = if names::validate_name(&f.username).is_ok() {
        st.db.user_password(&f.username)?
    } else {
        None
    };
    // Verify against a dummy hash when the user is unknown so timing does
    // not tell which names exist.
    let stored = found
        .as_ref()
        .map(|(_, h)| h.clone())
        .unwrap_or_else(|| st.dummy_hash.as_ref().clone());
    let pw = f.password.clone();
    let ok = st
        .argon2_pool
        .run(move || auth::verify_password(&pw, &stored))
        .await?;
    match found {
        Some((user, _)) if ok => logged_in(&st, &user, &f.next),
        _ => {
            st.login_limiter.failed(&f.username);
            render_status(
                StatusCode::UNAUTHORIZED,
                &account_page(
                    &v,
                    false,
                    &f.username,
                    &f.next,
                    Some("wrong user name or password".into()),
                ),
            )
        }
    }
}

pub(super) async fn logout(Post { st, v, form: f }: Post<CsrfForm>) -> WebResult {
    v.check_csrf(&f.csrf)?;
    if let Some(h) = &v.session_hash {
        st.db.delete_session(h)?;
    }
    let mut resp = Redirect::to("/").into_response();
    resp.headers_mut().append(
        header::SET_COOKIE,
        HeaderValue::from_str(&format!(
            "{SESSION_COOKIE}=; Path=/; HttpOnly; SameSite=Lax; Max-Age=0"
        ))
        .map_err(|e| WebError::Internal(e.to_string()))?,
    );
    Ok(resp)
}

fn tokens_page(
    st: &AppState,
    v: &Viewer,
    new_token: Option<String>,
    error: Option<String>,
) -> Result<TokensPage, WebError> {
    let user = v.require_user()?;
    let tokens = st
        .db
        .list_tokens(user.id)?
        .into_iter()
        .map(|t| TokenRow {
            id: t.id,
            name: t.name,
            created: format_time(t.created_at_ms / 1000),
            last_used: t
                .last_used_ms
                .map(|m| format_time(m / 1000))
                .unwrap_or_else(|| "never".into()),
        })
        .collect();
    Ok(TokensPage {
        title: "Tokens".into(),
        nav: v.nav(),
        tokens,
        new_token,
        error,
    })
}

pub(super) async fn tokens(State(st): State<AppState>, v: Viewer) -> WebResult {
    render(&tokens_page(&st, &v, None, None)?)
}

pub(super) async fn create_token(Post { st, v, form: f }: Post<NameForm>) -> WebResult {
    let user = v.require_user()?.clone();
    v.check_csrf(&f.csrf)?;
    let name = f.name.trim();
    if name.is_empty() || name.chars().count() > 64 {
        let page = tokens_page(
            &st,
            &v,
            None,
            Some("token name must be 1 to 64 characters".into()),
        )?;
        return render_status(StatusCode::BAD_REQUEST, &page);
    }
    let token = auth::new_token()?;
    st.db
        .create_token(user.id, name, &auth::sha256_hex(&token))?;
    render(&tokens_page(&st, &v, Some(token), None)?)
}

pub(super) async fn delete_token(
    Path(id): Path<i64>,
    Post { st, v, form: f }: Post<CsrfForm>,
) -> WebResult {
    let user = v.require_user()?.clone();
    v.check_csrf(&f.csrf)?;
    if !st.db.delete_token(user.id, id)? {
        return Err(WebError::NotFound);
    }
    Ok(Redirect::to("/settings/tokens").into_response())
}

/// Admins only; anyone else is told so (the page's existence is no secret).
fn require_admin(v: &Viewer) -> Result<(), WebError> {
    v.require_user()?;
    if v.is_admin() {
        Ok(())
    } else {
        Err(WebError::Forbidden("only admins may do that".into()))
    }
}

pub(super) async fn admin_page(State(st): State<AppState>, v: Viewer) -> WebResult {
    require_admin(&v)?;
    let users = st
        .db
        .users()?
        .into_iter()
        .map(|u| UserRow {
            admin: u.admin || st.admin.as_deref() == Some(u.name.as_str()),
            name: u.name,
            may_create_projects: u.may_create_projects,
        })
        .collect();
    render(&AdminPage {
        title: "Admin".into(),
        nav: v.nav(),
        users,
    })
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub(super) struct RightsForm {
    csrf: String,
    may_create_projects: String,
}

/// Grants ("1") or revokes ("0") an account's right to create projects.
pub(super) async fn set_rights(
    Path(name): Path<String>,
    Post { st, v, form: f }: Post<RightsForm>,
) -> WebResult {
    require_admin(&v)?;
    v.check_csrf(&f.csrf)?;
    let allow = match f.may_create_projects.as_str() {
        "1" => true,
        "0" => false,
        other => {
            return Err(WebError::BadRequest(format!(
                "may_create_projects must be 0 or 1, not {other:?}"
            )));
        }
    };
    if !st.db.set_rights(&name, None, Some(allow))? {
        return Err(WebError::NotFound);
    }
    tracing::info!(user = %name, may_create_projects = allow, by = ?v.user.as_ref().map(|u| &u.name), "rights changed");
    Ok(Redirect::to("/-/admin").into_response())
}
