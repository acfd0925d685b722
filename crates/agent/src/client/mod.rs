//! `stallwatch why` and `stallwatch incidents [ID]`: the running agent's verdict and incident
//! records in a terminal, read from its API (`/api/v1/verdict`, `/api/v1/incidents[/ID]`). The
//! CLI never reads `/proc` itself here: the agent has the history (since when, the incident
//! record) that one look cannot have.
//!
//! Exit status (README "CLI"): `why` exits 0 when the node is not stalled and 3 when it is
//! (whatever the cause; `--json` and the text say which and whether it is I/O); both commands
//! exit 1 when the agent cannot be asked (not running, timeout, wrong password, unknown
//! incident) and 2 on bad flags.
//!
//! - `http.rs`: a blocking HTTP/1.1 GET over `TcpStream` or rustls, with one deadline.
//! - `render.rs`: the text views (pure; control characters of untrusted names escaped).

mod http;
mod render;

use std::io::Write;

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::cli::{AgentArgs, BadInput, Exit, IncidentsArgs, WhyArgs};
use http::{Client, HttpError, Url};

impl AgentArgs {
    fn client(&self) -> Result<Client> {
        let url = Url::parse(&self.url)
            .map_err(anyhow::Error::msg)
            .context(BadInput)?;
        let password = match (
            &self.password_file,
            std::env::var("STALLWATCH_AGENT_PASSWORD"),
        ) {
            (Some(p), _) => Some(
                std::fs::read_to_string(p)
                    .with_context(|| format!("reading --agent.password-file {}", p.display()))
                    .context(BadInput)?
                    .trim_end_matches(['\r', '\n'])
                    .to_string(),
            ),
            (None, Ok(p)) => Some(p),
            (None, Err(_)) => None,
        };
        let authorization = match (&self.user, password) {
            (Some(u), Some(p)) => Some(format!(
                "Basic {}",
                crate::web::base64(format!("{u}:{p}").as_bytes())
            )),
            (Some(_), None) => {
                return Err(anyhow::anyhow!(
                    "--agent.user needs a password: set STALLWATCH_AGENT_PASSWORD or --agent.password-file"
                ))
                .context(BadInput)
            }
            (None, _) => None,
        };
        let tls = if url.tls {
            Some(http::tls_config(self.ca_file.as_deref()).context(BadInput)?)
        } else {
            None
        };
        Ok(Client {
            url,
            authorization,
            timeout: self.timeout,
            tls,
            server_name: self.server_name.clone(),
        })
    }
}

/// GETs `path` and returns its JSON, or an error that says what to do about it.
fn fetch(client: &Client, args: &AgentArgs, path: &str) -> Result<(Value, Vec<u8>)> {
    let resp = client.get(path).map_err(|e| {
        let hint = match e {
            HttpError::Unreachable { .. } | HttpError::Timeout { .. } => {
                " (is `stallwatch` running there? --agent.url or $STALLWATCH_AGENT_URL)"
            }
            HttpError::Bad { .. } => "",
        };
        anyhow::anyhow!("{e}{hint}")
    })?;
    let url = client.url.display(path);
    let json: Option<Value> = serde_json::from_slice(&resp.body).ok();
    let api_error = json
        .as_ref()
        .and_then(|j| j.get("error"))
        .and_then(Value::as_str)
        .map(render::clean);
    match resp.status {
        200 => {}
        401 if args.user.is_some() => bail!("the agent at {url} refused the password of user {:?} (401)", args.user.as_deref().unwrap_or("")),
        401 => bail!("the agent at {url} wants a user and password (401): --agent.user with $STALLWATCH_AGENT_PASSWORD or --agent.password-file"),
        404 if api_error.is_some() => bail!("{}", api_error.unwrap_or_default()),
        404 => bail!("the agent at {url} has no such endpoint (404): is it older than this stallwatch?"),
        429 => bail!("the agent at {url} is busy verifying logins (429); try again"),
        s => bail!("the agent at {url} answered {s}{}", api_error.map(|e| format!(": {e}")).unwrap_or_default()),
    }
    let json =
        json.with_context(|| format!("the agent at {url} sent something that is not JSON"))?;
    Ok((json, resp.body))
}

fn print(text: &str) -> Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .context("writing to stdout")
}

/// Prints the agent's body as-is (it is the documented API), ending in a newline.
fn print_raw(body: &[u8]) -> Result<()> {
    let text = String::from_utf8_lossy(body);
    print(&format!("{}\n", text.trim_end()))
}

pub fn why_main(args: &WhyArgs) -> Result<Exit> {
    let client = args.agent.client()?;
    let (verdict, body) = fetch(&client, &args.agent, "/api/v1/verdict")?;
    if args.json {
        print_raw(&body)?;
    } else {
        print(&render::verdict(&verdict))?;
    }
    Ok(
        if verdict.get("stalled").and_then(Value::as_bool) == Some(true) {
            Exit::Stalled
        } else {
            Exit::Ok
        },
    )
}

pub fn incidents_main(args: &IncidentsArgs) -> Result<Exit> {
    let client = args.agent.client()?;
    let path = match &args.id {
        Some(id) => {
            if id.is_empty()
                || !id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
            {
                return Err(anyhow::anyhow!(
                    "{id:?} is not an incident id (e.g. 20261203T140001Z)"
                ))
                .context(BadInput);
            }
            format!("/api/v1/incidents/{id}")
        }
        None => "/api/v1/incidents".to_string(),
    };
    let (json, body) = fetch(&client, &args.agent, &path)?;
    if args.json {
        print_raw(&body)?;
    } else if args.id.is_some() {
        print(&render::incident(&json))?;
    } else {
        print(&render::incident_list(&json))?;
    }
    Ok(Exit::Ok)
}
