//! Restore stage, the `Shape` decision: what a database the restore creates is given.
//! Invariant: the restored database gets the properties the backup recorded as far as the
//! target server can have them, and what cannot be carried over is said, never silently lost.

use super::{ident, query_err, ExistingDb, Plan, RestoreError};
use crate::source::properties::{self, DatabaseProperties};

/// What a database the restore creates is given: the properties the backup recorded, as far
/// as the target server can have them, or for a backup that predates them, the encoding,
/// locales and owner of the database it replaces.
pub(super) struct Shape {
    intended: Option<DatabaseProperties>,
    like: Option<ExistingDb>,
    pub(super) notes: Vec<String>,
}

impl Shape {
    pub(super) async fn decide(
        plan: &Plan,
        admin: &tokio_postgres::Client,
    ) -> Result<Shape, RestoreError> {
        let Some(recorded) = &plan.entry.manifest.database_properties else {
            return Ok(Shape {
                intended: None,
                like: plan.target.existing.clone(),
                notes: vec![format!(
                    "this backup predates recorded database properties: its settings, privileges and comment are not restored, and {}",
                    if plan.target.existing.is_some() {
                        "encoding, locales and owner are those of the database it replaces"
                    } else {
                        "encoding, locales and owner are the server's defaults"
                    }
                )],
            });
        };
        let roles = admin
            .query(
                "SELECT rolname::text, rolname = current_user FROM pg_catalog.pg_roles",
                &[],
            )
            .await
            .map_err(query_err("listing roles"))?;
        let me = roles
            .iter()
            .find(|r| r.get::<_, bool>(1))
            .map(|r| r.get::<_, String>(0))
            .unwrap_or_default();
        let roles = roles.iter().map(|r| r.get::<_, String>(0)).collect();
        let (intended, notes) = properties::intended(recorded, &roles, &me, plan.options.no_owner);
        Ok(Shape {
            intended: Some(intended),
            like: None,
            notes,
        })
    }

    pub(super) async fn create(
        &self,
        admin: &tokio_postgres::Client,
        name: &str,
        server_major: u32,
    ) -> Result<(), RestoreError> {
        let sql = match &self.intended {
            Some(p) => properties::create_sql(name, p, &p.owner, server_major)
                .map_err(|why| RestoreError::Refused(format!("{why}; nothing was changed")))?,
            None => create_sql_like(name, self.like.as_ref()),
        };
        admin
            .batch_execute(&sql)
            .await
            .map_err(query_err(&format!("creating database `{name}`")))
    }

    /// Gives `name` the intended comment, privileges and settings, then reads them back: the
    /// differences found.
    pub(super) async fn apply_and_check(
        &self,
        plan: &Plan,
        admin: &tokio_postgres::Client,
        name: &str,
    ) -> Result<Vec<String>, RestoreError> {
        let Some(p) = &self.intended else {
            return Ok(Vec::new());
        };
        let major = plan.target.server_major;
        let read = |what| async move {
            properties::read(admin, name, major)
                .await
                .map_err(query_err(what))?
                .ok_or_else(|| RestoreError::Refused(format!("database `{name}` is gone")))
        };
        let current = read("reading the restored database's properties").await?;
        let roles = p
            .privileges
            .iter()
            .map(|w| w.grantee.clone())
            .chain(p.settings.iter().filter_map(|s| s.role.clone()))
            .chain([p.owner.clone()])
            .collect();
        let (statements, _) = properties::follow_up_sql(name, p, &current.privileges, &roles);
        if !statements.is_empty() {
            admin
                .batch_execute(&statements.join(";\n"))
                .await
                .map_err(query_err(
                    "giving the restored database its privileges and settings",
                ))?;
        }
        let found = read("checking the restored database's properties").await?;
        Ok(properties::compare(p, &found))
    }
}

fn create_sql_like(name: &str, like: Option<&ExistingDb>) -> String {
    let mut sql = format!("CREATE DATABASE {} TEMPLATE template0", ident(name));
    if let Some(e) = like {
        // The replacement gets what the original had, so collation-dependent indexes and the
        // application's expectations stay the same.
        sql.push_str(&format!(
            " OWNER {} ENCODING {} LC_COLLATE {} LC_CTYPE {}",
            ident(&e.owner),
            postgres_protocol::escape::escape_literal(&e.encoding),
            postgres_protocol::escape::escape_literal(&e.collate),
            postgres_protocol::escape::escape_literal(&e.ctype),
        ));
    }
    sql
}
