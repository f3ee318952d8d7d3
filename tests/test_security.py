"""The dashboard as started by `make app` / `streamlit run app.py`: who can reach it."""

from pathlib import Path

from support import running_app


def listening_addresses(port: int) -> set[str]:
    """Local addresses with a socket listening on ``port``, read from /proc/net/tcp and tcp6."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:  # 0A = LISTEN
                found.add(address)
    return found


LOOPBACK = {"0100007F", "00000000000000000000000001000000"}  # 127.0.0.1 and ::1 as /proc writes them


def test_app_listens_on_localhost_only(tmp_path):
    with running_app(tmp_path) as (_url, port):  # the repository's config, no address given
        addresses = listening_addresses(port)
    assert addresses and addresses <= LOOPBACK, f"listening on {addresses}, not only on loopback"
