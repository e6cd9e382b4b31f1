"""The postgres role's templates and checks, then the real thing: a throwaway PostgreSQL 15 on 127.0.0.1 run
with the rendered postgresql.conf and pg_hba.conf and a certificate from the platform CA's own code path,
the role's database objects applied by Ansible (twice: the second run changes nothing), and the exporter."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import jinja2
import pytest
import yaml
from support.net import free_port
from support.plugins import load_plugin
from test_data_support import ROOT, ca_vars, inventory, issue_playbook, run_playbook, sample_host_view, write_playbook

ROLE = ROOT / "roles" / "postgres"
BIN = Path("/usr/lib/postgresql/15/bin")
EXPORTER = Path("/usr/bin/prometheus-postgres-exporter")


def _load(name: str, path: Path):
    return load_plugin(path, name)


hba = _load("postgres_hba", ROLE / "filter_plugins" / "postgres_hba.py")
checker = _load("pg_hba_check", ROLE / "files" / "pg_hba_check.py")
DB01 = {  # HOSTVIEW.md's example
    "name": "db01", "fqdn": "db01.lab.rampart.internal", "addresses": {"data": "10.77.30.23", "mgmt": "10.77.10.41"},
    "listens": {"postgres": {"address": "10.77.30.23", "port": 5432, "proto": "tcp", "plane": "zone"},
                "postgres_exporter": {"address": "10.77.10.41", "port": 9187, "proto": "tcp", "plane": "mgmt"}},
    "clients": {"postgres": [{"source": "bot01", "address": "10.77.20.57"}],
                "postgres_exporter": [{"source": "mon01", "address": "10.77.10.33"}]},
}


def defaults(**over) -> dict:
    env = jinja2.Environment(undefined=jinja2.StrictUndefined)  # noqa: S701 - not HTML
    raw = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())
    raw.update(over)
    for _ in range(3):  # resolve the defaults that refer to other defaults
        raw = {k: env.from_string(v).render(**raw) if isinstance(v, str) and "{{" in v else v for k, v in raw.items()}
    return raw


def render(template: str, host: dict, **over) -> str:
    env = jinja2.Environment(  # noqa: S701 - configuration files, not HTML
        loader=jinja2.FileSystemLoader(ROLE / "templates"), undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True, trim_blocks=True)  # as Ansible's template module
    v = defaults(**over)
    v["postgres_hba_rules"] = hba.postgres_hba(
        host, v["postgres_bot_database"], v["postgres_bot_user"],
        [{"database": v["postgres_exporter_database"], "user": v["postgres_exporter_user"]}])
    return env.get_template(template).render(**v, rampart_host=host, ansible_managed="test")


def rules(text: str) -> list[list[str]]:
    return [line.split("#")[0].split() for line in text.splitlines() if line.split("#")[0].strip()]


# --- rendering and checks (no server) ---------------------------------------------------------------------

def test_pg_hba_from_the_host_view():
    got = rules(render("pg_hba.conf.j2", DB01))
    assert got == [["local", "all", "postgres", "peer"],
                   ["local", "postgres", "postgres_exporter", "scram-sha-256"],
                   ["hostssl", "rampart", "rampart_bot", "10.77.20.57/32", "scram-sha-256"]]
    assert checker.problems(render("pg_hba.conf.j2", DB01)) == []


def test_pg_hba_one_line_per_client_address_and_nothing_else():
    host = json.loads(json.dumps(DB01))
    host["clients"]["postgres"] = [{"source": "bot01", "address": "10.77.20.57"},
                                   {"source": "bot02", "address": "10.77.20.58"},
                                   {"source": "bot01", "address": "10.77.20.57"}]
    text = render("pg_hba.conf.j2", host)
    network = [r for r in rules(text) if r[0] != "local"]
    assert [r[3] for r in network] == ["10.77.20.57/32", "10.77.20.58/32"]
    assert all(r[0] == "hostssl" and r[4] == "scram-sha-256" for r in network)
    words = {w for r in rules(text) for w in r}
    assert not words & {"trust", "md5", "password", "host", "hostnossl", "all@", "0.0.0.0/0"}


def test_pg_hba_without_clients_has_no_network_line():
    host = json.loads(json.dumps(DB01))
    host["clients"] = {}
    assert [r[0] for r in rules(render("pg_hba.conf.j2", host))] == ["local", "local"]


@pytest.mark.parametrize("change, message", [
    (lambda h: h["clients"]["postgres"].append({"source": "x", "address": "bogus"}),
     "rampart_host.clients.postgres[1].address: 'bogus' is not an IP address"),
    (lambda h: h["clients"]["postgres"].append({"source": "x", "address": "0.0.0.0"}),  # noqa: S104
     "rampart_host.clients.postgres[1].address: 0.0.0.0 would match every host"),
    (lambda h: h["listens"].pop("postgres"), "rampart_host.listens.postgres: missing on db01"),
    (lambda h: h["listens"]["postgres"].update(address="db01"),
     "rampart_host.listens.postgres.address: 'db01' is not an IP address"),
    (lambda h: h["clients"].update(postgres="bot01"), "rampart_host.clients.postgres: expected a list on db01"),
])
def test_bad_host_view_is_refused_naming_the_key(change, message):
    host = json.loads(json.dumps(DB01))
    change(host)
    with pytest.raises(hba.AnsibleFilterError) as err:
        hba.postgres_hba(host, "rampart", "rampart_bot")
    assert str(err.value).startswith(message)


def test_bad_identifiers_are_refused():
    with pytest.raises(hba.AnsibleFilterError, match="postgres_bot_user: 'Bot; DROP' is not a plain"):
        hba.postgres_hba(DB01, "rampart", "Bot; DROP")


@pytest.mark.parametrize("line, words", [
    ("host rampart rampart_bot 10.77.20.57/32 scram-sha-256", "connection type 'host'"),
    ("hostnossl rampart rampart_bot 10.77.20.57/32 scram-sha-256", "connection type 'hostnossl'"),
    ("hostssl rampart rampart_bot 10.77.20.57/32 md5", "method 'md5'"),
    ("hostssl rampart rampart_bot 10.77.20.57/32 trust", "method 'trust'"),
    ("local all all trust", "method 'trust'"),
    ("local all rampart_bot peer", "peer login only for the postgres superuser"),
    ("hostssl rampart rampart_bot 10.77.20.0/24 scram-sha-256", "covers 256 addresses"),
    ("hostssl all rampart_bot 10.77.20.57/32 scram-sha-256", "one database and one non-superuser role"),
    ("hostssl rampart postgres 10.77.20.57/32 scram-sha-256", "one database and one non-superuser role"),
    ("hostssl rampart rampart_bot 10.77.20.57 scram-sha-256", ""),
    ("", "no rules at all"),
])
def test_the_hba_checker_refuses_what_the_policy_forbids(tmp_path, line, words):
    path = tmp_path / "pg_hba.conf"
    path.write_text("local all postgres peer\n" + line + "\n" if line else "# nothing\n")
    proc = subprocess.run(["python3", str(ROLE / "files" / "pg_hba_check.py"), str(path)],
                          capture_output=True, text=True)
    if line == "hostssl rampart rampart_bot 10.77.20.57 scram-sha-256":
        assert proc.returncode == 0, proc.stderr  # a bare address is one host: PostgreSQL accepts it as /32
        return
    assert proc.returncode == 1 and words in proc.stderr


def test_postgresql_conf_listens_only_where_the_topology_says():
    conf = render("postgresql.conf.j2", DB01, postgres_settings={"log_min_duration_statement": 500,
                                                                  "application_name": "it's"})
    settings = dict(line.split(" = ", 1) for line in conf.splitlines() if " = " in line and line[0] != "#")
    assert settings["listen_addresses"] == "'10.77.30.23'" and settings["port"] == "5432"
    assert settings["ssl"] == "on"
    assert settings["password_encryption"] == "scram-sha-256"  # noqa: S105 - a setting, not a password
    assert settings["ssl_cert_file"] == "'/etc/postgresql/15/main/tls/server.crt'"
    assert (settings["shared_buffers"], settings["effective_cache_size"]) == ("256MB", "768MB")
    assert settings["log_min_duration_statement"] == "500" and settings["application_name"] == "'it''s'"



@pytest.mark.skipif(not (BIN / "postgres").exists(), reason="needs PostgreSQL 15 server binaries")
@pytest.mark.parametrize("settings, ok", [({}, True), ({"no_such_setting": 1}, False),
                                          ({"work_mem": "4XB"}, False)])
def test_postgres_accepts_the_rendered_config_and_refuses_a_bad_one(pg_tmp, settings, ok):
    """What the role's `validate:` (postgres -C) decides before installing postgresql.conf."""
    tmp_path = pg_tmp
    data = tmp_path / "data"
    _initdb(data)
    conf = tmp_path / "postgresql.conf"
    conf.write_text(render("postgresql.conf.j2", DB01, postgres_data_dir=str(data), postgres_settings=settings))
    conf.chmod(0o644)
    proc = subprocess.run([*_as_postgres(), str(BIN / "postgres"), f"--config-file={conf}", "-C", "data_directory"],
                          capture_output=True, text=True)
    assert (proc.returncode == 0) is ok, proc.stderr


# --- a real server with the rendered configuration ----------------------------------------------------------

def _as_postgres() -> list[str]:
    return ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []


def _postgres_tmp() -> Path:
    """A directory the postgres user can reach (pytest's own tmp root is private to root)."""
    path = Path(tempfile.mkdtemp(prefix="rampart-pgtest-"))
    path.chmod(0o755)
    return path


@pytest.fixture
def pg_tmp():
    path = _postgres_tmp()
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _initdb(data: Path) -> None:
    data.parent.mkdir(exist_ok=True)
    data.parent.chmod(0o755)
    if os.geteuid() == 0:
        shutil.chown(data.parent, "postgres", "postgres")
    subprocess.run([*_as_postgres(), str(BIN / "initdb"), "-D", str(data), "-U", "postgres", "--auth=peer",
                    "-E", "UTF8", "--no-sync"], check=True, capture_output=True)


@pytest.fixture(scope="module")
def server():
    if not (BIN / "postgres").exists() or os.geteuid() != 0:
        pytest.skip("needs PostgreSQL 15 server binaries and root (to run it as the postgres user)")
    tmp = _postgres_tmp()
    for d in ("conf", "tls", "sock", "trust", "host"):
        (tmp / d).mkdir()
        shutil.chown(tmp / d, "postgres", "postgres")
    (tmp / "sock").chmod(0o755)
    _initdb(tmp / "db" / "data")
    port = free_port()
    host = sample_host_view(port=port, exporter_port=free_port("127.0.0.2"))
    inv = inventory(tmp, hostvars={"rampart_host": host})
    # The database objects run as the postgres user (become su), with the system python and its psycopg2, as on
    # a Debian host (the venv's interpreter lives under /root, which postgres cannot read).
    objects_inv = inventory(tmp, hostvars={"rampart_host": host, "ansible_become_method": "su",
                                           "ansible_python_interpreter": "/usr/bin/python3"}, filename="objects.yml")
    # The certificate through the platform CA's real entry point (key made "on the host", owned by postgres).
    issued = run_playbook(issue_playbook(tmp, tmp / "tls" / "server.crt", tmp / "tls" / "server.key",
                                         "postgres", "postgres"), inv, *ca_vars(tmp))
    assert issued.rc == 0, issued.failures()
    over = {"postgres_conf_dir": str(tmp / "conf"), "postgres_data_dir": str(tmp / "db" / "data"),
            "postgres_socket_dir": str(tmp / "sock"), "postgres_tls_dir": str(tmp / "tls"),
            "postgres_memory_mb": 256}
    (tmp / "conf" / "postgresql.conf").write_text(render("postgresql.conf.j2", host, **over))
    (tmp / "conf" / "pg_hba.conf").write_text(render("pg_hba.conf.j2", host, **over))
    (tmp / "conf" / "pg_ident.conf").write_text("")
    assert checker.problems((tmp / "conf" / "pg_hba.conf").read_text()) == []
    start = subprocess.run([*_as_postgres(), str(BIN / "pg_ctl"), "-D", str(tmp / "conf"), "-l",
                            str(tmp / "sock" / "log"), "-w", "-t", "60", "start"], capture_output=True, text=True)
    assert start.returncode == 0, start.stdout + start.stderr + _read(tmp / "sock" / "log")
    secrets = {"postgres_bot_password": "bot-" + os.urandom(12).hex(),
               "postgres_exporter_password": "exp-" + os.urandom(12).hex()}
    book = write_playbook(tmp, "objects-play.yml", [{
        "name": "objects", "hosts": "all", "gather_facts": False,
        "tasks": [{"name": "Objects", "ansible.builtin.include_role": {"name": "postgres", "tasks_from": "objects"},
                   "vars": {**over, **secrets}}]}])
    try:
        yield {"tmp": tmp, "port": port, "host": host, "inv": objects_inv, "book": book, "secrets": secrets,
               "over": over}
    finally:
        subprocess.run([*_as_postgres(), str(BIN / "pg_ctl"), "-D", str(tmp / "conf"), "-m", "immediate", "stop"],
                       capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)


def _connect(server, user="rampart_bot", password=None, dbname="rampart", sslmode="verify-full", host="127.0.0.1"):
    import psycopg
    return psycopg.connect(host=host, port=server["port"], user=user, dbname=dbname, connect_timeout=5,
                           password=password or server["secrets"]["postgres_bot_password"], sslmode=sslmode,
                           sslrootcert=str(server["tmp"] / "trust" / "ca.crt"), autocommit=True)


@pytest.fixture(scope="module")
def applied(server):
    """The role's database objects, applied twice by Ansible."""
    first = run_playbook(server["book"], server["inv"])
    assert first.rc == 0, first.failures()
    second = run_playbook(server["book"], server["inv"])
    return first, second


def test_objects_are_created_once(server, applied):
    first, second = applied
    assert first.changed("db01") > 0
    for value in server["secrets"].values():
        assert value not in first.out + first.err, "a password in Ansible's output"
    assert second.rc == 0 and second.changed("db01") == 0, second.changed_tasks("db01")


def test_bot_logs_in_over_verified_tls_with_scram(server, applied):
    with _connect(server) as conn:
        assert conn.info.pgconn.ssl_in_use
        ssl = conn.execute("SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone()
        assert ssl == (True, "TLSv1.3")
        conn.execute("CREATE TABLE IF NOT EXISTS orders (id text primary key)")
        schema = conn.execute("SELECT table_schema FROM information_schema.tables WHERE table_name='orders'").fetchone()
        assert schema == ("rampart_bot",), "the bot's tables land in its own schema"
    assert _psql(server, "SELECT rolpassword FROM pg_authid WHERE rolname='rampart_bot'").startswith(
        "SCRAM-SHA-256$")
    assert _psql(server, "SELECT rolsuper, rolcreatedb, rolcreaterole FROM pg_roles "
                         "WHERE rolname='rampart_bot'") == "f|f|f"
    assert _psql(server, "SELECT nspname FROM pg_namespace n JOIN pg_roles r ON r.oid = n.nspowner "
                         "WHERE r.rolname = 'rampart_bot'") == "rampart_bot"
    assert _psql(server, "SELECT string_agg(b.rolname, ',') FROM pg_auth_members m JOIN pg_roles b ON "
                         "b.oid = m.roleid JOIN pg_roles u ON u.oid = m.member WHERE u.rolname = "
                         "'postgres_exporter'") == "pg_monitor"


def _psql(server, sql: str) -> str:
    """As the superuser over the socket (peer): the only way the superuser gets in."""
    proc = subprocess.run([*_as_postgres(), "psql", "-X", "-At", "-h", str(server["tmp"] / "sock"), "-p",
                           str(server["port"]), "-d", "rampart", "-c", sql], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def test_bot_is_least_privileged(server, applied):
    import psycopg
    with _connect(server) as conn:
        for sql in ("CREATE TABLE public.sneaky (x int)", "CREATE DATABASE other", "CREATE ROLE other",
                    "CREATE SCHEMA other"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(sql)


@pytest.mark.parametrize("kwargs, words", [
    ({"sslmode": "disable"}, "no encryption"),
    ({"password": "wrong-password-000"}, "password authentication failed"),
    ({"dbname": "postgres"}, "no pg_hba.conf entry"),
    ({"user": "postgres"}, "no pg_hba.conf entry"),
    ({"user": "postgres_exporter"}, "no pg_hba.conf entry"),
])
def test_everything_else_is_refused(server, applied, kwargs, words):
    import psycopg
    with pytest.raises(psycopg.OperationalError) as err:
        _connect(server, **kwargs)
    assert words in str(err.value)


def test_tls_name_check_fails_for_a_name_not_in_the_certificate(server, applied):
    import psycopg
    with pytest.raises(psycopg.OperationalError, match="does not match host name"):
        _connect(server, host="localhost")


@pytest.mark.skipif(not EXPORTER.exists(), reason="needs prometheus-postgres-exporter (Debian)")
def test_exporter_reads_its_password_from_a_file_and_reports_pg_up(server, applied):
    tmp, host = server["tmp"], server["host"]
    pwfile = tmp / "exporter-password"
    pwfile.write_text(server["secrets"]["postgres_exporter_password"])
    pwfile.chmod(0o600)
    shutil.chown(pwfile, "prometheus", "prometheus")
    default = tmp / "exporter.default"
    default.write_text(render("postgres-exporter.default.j2", host, **server["over"],
                              postgres_exporter_password_file=str(pwfile)))
    assert server["secrets"]["postgres_exporter_password"] not in default.read_text()
    assert subprocess.run(["sh", "-n", str(default)]).returncode == 0
    # What the Debian unit does: EnvironmentFile= then `prometheus-postgres-exporter $ARGS` as prometheus.
    proc = subprocess.Popen(["runuser", "-u", "prometheus", "--", "sh", "-c",
                             f"set -a; . {default}; exec {EXPORTER} $ARGS"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        listen = host["listens"]["postgres_exporter"]
        url = f"http://{listen['address']}:{listen['port']}/metrics"
        body = ""
        for _ in range(100):
            try:
                body = urllib.request.urlopen(url, timeout=2).read().decode()
                if "\npg_up " in body:
                    break
            except OSError:
                time.sleep(0.1)
        assert "\npg_up 1" in body, body[-500:]
        argv = Path(f"/proc/{proc.pid}/cmdline").read_bytes()
        assert server["secrets"]["postgres_exporter_password"].encode() not in argv
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)


def _read(path: Path) -> str:
    return path.read_text() if path.exists() else ""
