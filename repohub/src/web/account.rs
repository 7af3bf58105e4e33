//! Sign up, log in, log out, and personal access tokens.

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Redirect};
use http::{HeaderValue, StatusCode, header};
use serde::Deserialize;

use super::pages::{AccountPage, TokenRow, TokensPage};
use super::{
    CsrfForm, NameForm, Post, SESSION_COOKIE, SESSION_TTL_MS, Viewer, WebError, WebResult,
    blocking, render, render_status,
};
use crate::AppState;
use crate::auth;
use crate::db::User;
use crate::git::format_time;
use crate::names;

const MIN_PASSWORD: usize = 8;
const MAX_PASSWORD: usize = 1024;

#[derive(Deserialize, Default)]
#[serde(default)]
pub(super) struct CredentialsForm {
    csrf: String,
    username: String,
    password: String,
}

fn account_page(v: &Viewer, signup: bool, username: &str, error: Option<String>) -> AccountPage {
    AccountPage {
        title: if signup { "Sign up" } else { "Log in" }.into(),
        nav: v.nav(),
        action: if signup { "/signup" } else { "/login" },
        signup,
        username: username.to_owned(),
        error,
    }
}

pub(super) async fn signup_form(v: Viewer) -> WebResult {
    if v.user.is_some() {
        return Ok(Redirect::to("/").into_response());
    }
    render(&account_page(&v, true, "", None))
}

pub(super) async fn login_form(v: Viewer) -> WebResult {
    if v.user.is_some() {
        return Ok(Redirect::to("/").into_response());
    }
    render(&account_page(&v, false, "", None))
}

/// Starts a session and redirects home with the cookie set.
fn logged_in(st: &AppState, user: &User) -> WebResult {
    let token = auth::new_token()?;
    st.db
        .create_session(&auth::sha256_hex(&token), user.id, SESSION_TTL_MS)?;
    let mut resp = Redirect::to("/").into_response();
    let cookie = super::session_cookie(&token, st.secure_cookies);
    resp.headers_mut().append(
        header::SET_COOKIE,
        HeaderValue::from_str(&cookie).map_err(|e| WebError::Internal(e.to_string()))?,
    );
    Ok(resp)
}

pub(super) async fn signup(Post { st, v, form: f }: Post<CredentialsForm>) -> WebResult {
    v.check_csrf(&f.csrf)?;
    let fail = |msg: String| {
        render_status(
            StatusCode::BAD_REQUEST,
            &account_page(&v, true, &f.username, Some(msg)),
        )
    };
    if let Err(e) = names::validate_name(&f.username) {
        return fail(e.to_string());
    }
    if f.password.chars().count() < MIN_PASSWORD || f.password.len() > MAX_PASSWORD {
        return fail(format!(
            "password must be {MIN_PASSWORD} to {MAX_PASSWORD} characters"
        ));
    }
    let kdf = st.kdf;
    let pw = f.password.clone();
    let hash = blocking(move || Ok(auth::hash_password(&kdf, &pw)?)).await?;
    let user = match st.db.create_user(&f.username, &hash) {
        Ok(u) => u,
        Err(crate::db::DbError::Conflict(_)) => return fail("that name is taken".into()),
        Err(e) => return Err(e.into()),
    };
    tracing::info!(user = %user.name, "user signed up");
    logged_in(&st, &user)
}

pub(super) async fn login(Post { st, v, form: f }: Post<CredentialsForm>) -> WebResult {
    v.check_csrf(&f.csrf)?;
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
    let ok = blocking(move || Ok(auth::verify_password(&pw, &stored))).await?;
    match found {
        Some((user, _)) if ok => logged_in(&st, &user),
        _ => render_status(
            StatusCode::UNAUTHORIZED,
            &account_page(
                &v,
                false,
                &f.username,
                Some("wrong user name or password".into()),
            ),
        ),
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
