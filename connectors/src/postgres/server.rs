//! A throwaway PostgreSQL server for tests and the demo: the Debian packages' `initdb` and
//! `pg_ctl` (under `/usr/lib/postgresql/<version>/bin`), a data directory in a directory the
//! caller owns, listening on a free loopback port and a unix socket in that directory, stopped
//! when dropped. PostgreSQL refuses to run as root, so as root it runs as the `postgres` user
//! (`runuser`), and the directory is handed to that user.
//!
//! Local connections (the unix socket) are trusted; TCP connections need a password
//! (SCRAM-SHA-256), which is what connectors use.

use std::net::TcpListener;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::ConnectorError;

/// Where the Debian packages install the server binaries.
pub const BIN_ROOT: &str = "/usr/lib/postgresql";

/// A running server; stopped on drop.
#[derive(Debug)]
pub struct LocalServer {
    bin: PathBuf,
    dir: PathBuf,
    data: PathBuf,
    port: u16,
    as_postgres: bool,
    stopped: bool,
}

fn failed(what: &str, reason: impl std::fmt::Display) -> ConnectorError {
    ConnectorError::Internal(format!("local postgresql: {what}: {reason}"))
}

/// The newest installed server's binary directory, if any.
pub fn find_binaries() -> Option<PathBuf> {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir(BIN_ROOT)
        .ok()?
        .flatten()
        .filter_map(|e| {
            let version: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            (bin.join("initdb").is_file() && bin.join("pg_ctl").is_file()).then_some((version, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, bin)| bin)
}

fn running_as_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

impl LocalServer {
    /// Starts a server in `dir` (created if missing; must be a path without spaces or quotes).
    /// Fails with a clear message if PostgreSQL is not installed.
    pub fn start(dir: &Path) -> Result<Self, ConnectorError> {
        let bin = find_binaries().ok_or_else(|| {
            ConnectorError::Internal(format!(
                "PostgreSQL is not installed: no `initdb` and `pg_ctl` under `{BIN_ROOT}/*/bin` \
                 (install the Debian package `postgresql`; scripts/test.sh does)"
            ))
        })?;
        let shown = dir.display().to_string();
        if shown
            .chars()
            .any(|c| c.is_whitespace() || "'\"\\$`".contains(c))
        {
            return Err(failed(
                "directory",
                format!("`{shown}` has spaces or quotes"),
            ));
        }
        std::fs::create_dir_all(dir).map_err(|e| failed("create directory", e))?;
        let as_postgres = running_as_root();
        let data = dir.join("pgdata");
        let mut server = Self {
            bin,
            dir: dir.to_path_buf(),
            data,
            port: free_port()?,
            as_postgres,
            stopped: true,
        };
        if as_postgres {
            let status = Command::new("chown")
                .arg("-R")
                .arg("postgres:postgres")
                .arg(dir)
                .status()
                .map_err(|e| failed("chown", e))?;
            if !status.success() {
                return Err(failed("chown to the postgres user", status));
            }
        }
        server.run(
            "initdb",
            &[
                "-D",
                &server.data.display().to_string(),
                "-U",
                "postgres",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "--no-locale",
                "-E",
                "UTF8",
                "--no-sync",
            ],
        )?;
        let log = server.dir.join("postgresql.log").display().to_string();
        // The free port may be taken by someone else before the server binds it: try anew.
        let mut attempt = 0;
        loop {
            let options = format!(
                "-c listen_addresses=127.0.0.1 -p {} -k {} -c fsync=off -c full_page_writes=off",
                server.port,
                server.dir.display()
            );
            let started = server.run(
                "pg_ctl",
                &[
                    "-D",
                    &server.data.display().to_string(),
                    "-l",
                    &log,
                    "-w",
                    "-t",
                    "60",
                    "-o",
                    &options,
                    "start",
                ],
            );
            attempt += 1;
            if started.is_ok() {
                break;
            }
            // A server that started too slowly must not be left running.
            let data = server.data.display().to_string();
            let _ = server.run("pg_ctl", &["-D", &data, "-m", "immediate", "stop"]);
            match started {
                Err(e) if attempt >= 3 => return Err(e),
                _ => server.port = free_port()?,
            }
        }
        server.stopped = false;
        Ok(server)
    }

    fn run(&self, tool: &str, args: &[&str]) -> Result<(), ConnectorError> {
        let exe = self.bin.join(tool);
        let mut cmd = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.arg("-u").arg("postgres").arg("--").arg(&exe);
            c
        } else {
            Command::new(&exe)
        };
        let out = cmd
            .args(args)
            .current_dir(&self.dir)
            .output()
            .map_err(|e| failed(tool, e))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(failed(
                tool,
                format!(
                    "{}: {}{}",
                    out.status,
                    String::from_utf8_lossy(&out.stdout).trim(),
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            ))
        }
    }

    /// The TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The directory of the unix socket.
    pub fn socket_dir(&self) -> &Path {
        &self.dir
    }

    /// A connection string for the superuser over the unix socket (trusted; for setting up).
    pub fn admin_connection_string(&self) -> String {
        format!(
            "host={} port={} user=postgres dbname=postgres",
            self.dir.display(),
            self.port
        )
    }

    /// A connection string for `user` with `password` over TCP on loopback.
    pub fn tcp_connection_string(&self, user: &str, password: &str, dbname: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user={user} password={password} dbname={dbname}",
            self.port
        )
    }

    /// Runs SQL as the superuser (test and demo setup; the text is the caller's, never a value
    /// from outside).
    pub async fn execute(&self, sql: &str) -> Result<(), ConnectorError> {
        let (client, connection) =
            tokio_postgres::connect(&self.admin_connection_string(), tokio_postgres::NoTls)
                .await
                .map_err(|e| failed("connect", e))?;
        let task = tokio::spawn(connection);
        let result = client
            .batch_execute(sql)
            .await
            .map_err(|e| failed("execute", e));
        drop(client);
        let _ = task.await;
        result
    }

    /// Creates a login role `user` with `password` (both plain identifiers) that may read every
    /// table and view of schema `public` of database `postgres`, and returns its connection
    /// string over TCP.
    pub async fn create_reader(
        &self,
        user: &str,
        password: &str,
    ) -> Result<String, ConnectorError> {
        crate::postgres::sql::check_identifier("role", user)?;
        crate::postgres::sql::check_identifier("password", password)?;
        self.execute(&format!(
            "CREATE ROLE \"{user}\" LOGIN PASSWORD '{password}'; \
             GRANT USAGE ON SCHEMA public TO \"{user}\"; \
             ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT ON TABLES TO \"{user}\"; \
             GRANT SELECT ON ALL TABLES IN SCHEMA public TO \"{user}\";"
        ))
        .await?;
        Ok(self.tcp_connection_string(user, password, "postgres"))
    }

    /// Creates table `public.<table>` with the columns of `batches`' schema (connector types:
    /// string → text, int64 → int8, float64 → float8, bool → bool, timestamp → timestamptz;
    /// `NOT NULL` where the field is not nullable) and inserts the rows, every value a bound
    /// parameter (one `unnest` insert per batch).
    pub async fn load(
        &self,
        table: &str,
        schema: &arrow::datatypes::Schema,
        batches: &[arrow::record_batch::RecordBatch],
    ) -> Result<u64, ConnectorError> {
        use crate::schema::FieldType;
        use arrow::array::AsArray;
        use arrow::datatypes::{Float64Type, Int64Type, TimestampMicrosecondType};
        use tokio_postgres::types::ToSql;
        crate::postgres::sql::check_identifier("table", table)?;
        let mut columns = Vec::new();
        let mut types = Vec::new();
        for f in schema.fields() {
            crate::postgres::sql::check_identifier("column", f.name())?;
            let t = FieldType::from_data_type(f.data_type()).ok_or_else(|| {
                failed(
                    "load",
                    format!("column `{}` has no connector type", f.name()),
                )
            })?;
            let sql = match t {
                FieldType::String => "text",
                FieldType::Int64 => "int8",
                FieldType::Float64 => "float8",
                FieldType::Bool => "bool",
                FieldType::Timestamp => "timestamptz",
            };
            let null = if f.is_nullable() { "" } else { " NOT NULL" };
            columns.push(format!("\"{}\" {sql}{null}", f.name()));
            types.push((t, sql));
        }
        let (client, connection) =
            tokio_postgres::connect(&self.admin_connection_string(), tokio_postgres::NoTls)
                .await
                .map_err(|e| failed("connect", e))?;
        let task = tokio::spawn(connection);
        let result = async {
            client
                .batch_execute(&format!(
                    "CREATE TABLE public.\"{table}\" ({})",
                    columns.join(", ")
                ))
                .await
                .map_err(|e| failed("create table", e))?;
            let unnest: Vec<String> = types
                .iter()
                .enumerate()
                .map(|(i, (_, sql))| format!("${}::{sql}[]", i + 1))
                .collect();
            let insert = client
                .prepare(&format!(
                    "INSERT INTO public.\"{table}\" SELECT * FROM unnest({})",
                    unnest.join(", ")
                ))
                .await
                .map_err(|e| failed("prepare insert", e))?;
            let mut rows = 0u64;
            for b in batches {
                let mut params: Vec<Box<dyn ToSql + Sync + Send>> = Vec::new();
                for (col, (t, _)) in b.columns().iter().zip(&types) {
                    let p: Box<dyn ToSql + Sync + Send> = match t {
                        FieldType::String => Box::new(
                            col.as_string::<i32>()
                                .iter()
                                .map(|v| v.map(str::to_owned))
                                .collect::<Vec<_>>(),
                        ),
                        FieldType::Int64 => {
                            Box::new(col.as_primitive::<Int64Type>().iter().collect::<Vec<_>>())
                        }
                        FieldType::Float64 => {
                            Box::new(col.as_primitive::<Float64Type>().iter().collect::<Vec<_>>())
                        }
                        FieldType::Bool => Box::new(col.as_boolean().iter().collect::<Vec<_>>()),
                        FieldType::Timestamp => Box::new(
                            col.as_primitive::<TimestampMicrosecondType>()
                                .iter()
                                .map(|v| {
                                    v.and_then(|m| {
                                        time::OffsetDateTime::from_unix_timestamp_nanos(
                                            i128::from(m) * 1000,
                                        )
                                        .ok()
                                    })
                                })
                                .collect::<Vec<_>>(),
                        ),
                    };
                    params.push(p);
                }
                let refs: Vec<&(dyn ToSql + Sync)> = params
                    .iter()
                    .map(|p| p.as_ref() as &(dyn ToSql + Sync))
                    .collect();
                rows += client
                    .execute(&insert, &refs)
                    .await
                    .map_err(|e| failed("insert", e))?;
            }
            Ok(rows)
        }
        .await;
        drop(client);
        let _ = task.await;
        result
    }

    /// Turns TLS on with this certificate chain and key (PEM; the data directory's
    /// `server.crt` and `server.key`), reloading the configuration.
    pub async fn enable_tls(&self, cert_pem: &str, key_pem: &str) -> Result<(), ConnectorError> {
        use std::os::unix::fs::PermissionsExt;
        let cert = self.data.join("server.crt");
        let key = self.data.join("server.key");
        std::fs::write(&cert, cert_pem).map_err(|e| failed("write server.crt", e))?;
        std::fs::write(&key, key_pem).map_err(|e| failed("write server.key", e))?;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| failed("chmod server.key", e))?;
        if self.as_postgres {
            let status = Command::new("chown")
                .arg("postgres:postgres")
                .arg(&cert)
                .arg(&key)
                .status()
                .map_err(|e| failed("chown", e))?;
            if !status.success() {
                return Err(failed("chown the tls files", status));
            }
        }
        // Each on its own: ALTER SYSTEM refuses to run inside a transaction block.
        self.execute("ALTER SYSTEM SET ssl = on").await?;
        self.execute("SELECT pg_reload_conf()").await
    }

    /// Stops the server at once (as a crash would: open connections break).
    pub fn kill(&mut self) -> Result<(), ConnectorError> {
        self.stop("immediate")
    }

    fn stop(&mut self, mode: &str) -> Result<(), ConnectorError> {
        if self.stopped {
            return Ok(());
        }
        self.stopped = true;
        self.run(
            "pg_ctl",
            &[
                "-D",
                &self.data.display().to_string(),
                "-m",
                mode,
                "-w",
                "stop",
            ],
        )
    }
}

impl Drop for LocalServer {
    fn drop(&mut self) {
        if let Err(e) = self.stop("fast") {
            tracing::warn!(error = %e, "local postgresql did not stop");
        }
    }
}

fn free_port() -> Result<u16, ConnectorError> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| failed("find a free port", e))?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(|e| failed("find a free port", e))
}
