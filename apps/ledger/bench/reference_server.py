#!/usr/bin/env python3
"""
The reference server of the ledger benchmark: the seed's own design, written as the seed asked for it.

Python 3, SQLAlchemy 1.4 `scoped_session` over a QueuePool of 10, PyMySQL, one thread per connection, a new
transaction per request. It speaks the ledger's TCP line protocol (docs/ledger.md) with the ledger's SQL, row
locking (SELECT ... FOR UPDATE in ascending id order), idempotency handling and retries (deadlock, lock wait
timeout), on the ledger's tables. Only what the benchmark and a smoke test need is validated.

    python3 reference_server.py --url mysql+pymysql://user:pass@127.0.0.1:3306/db --port 7071 --token T
"""
import argparse
import hmac
import json
import socket
import sys
import threading

from sqlalchemy import create_engine, text
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.orm import scoped_session, sessionmaker

MAX_AMOUNT = 10**15
MAX_BALANCE = 2**63 - 1
MAX_LINE = 64 * 1024
RETRYABLE = (1213, 1205)


class Refused(Exception):
    def __init__(self, code, message, **details):
        super().__init__(message)
        self.body = {"code": code, "message": message, **details}


def money(n):
    return n if n <= 2**53 - 1 else str(n)


def to_int(value, name, positive=True):
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise Refused("invalid_request", f"{name} must be an integer")
    if isinstance(value, str):
        if not value.isdigit() or len(value) > 40:
            raise Refused("invalid_request", f"{name} must be an integer")
        value = int(value)
    if positive and value <= 0:
        raise Refused("invalid_request", f"{name} must be positive")
    return value


def transfer_json(row):
    src, dst, key = row["src"], row["dst"], row["idempotency_key"]
    if isinstance(key, bytes):
        key = key.decode("utf-8")
    kind = "deposit" if src is None else "withdrawal" if dst is None else "transfer"
    return {"id": row["id"], "kind": kind, "from": src, "to": dst, "amount": money(row["amount"]),
            "idempotencyKey": key}


class Ledger:
    def __init__(self, url):
        self.engine = create_engine(url, pool_size=10, max_overflow=0, pool_timeout=5, pool_pre_ping=False,
                                    isolation_level="REPEATABLE READ")
        self.Session = scoped_session(sessionmaker(bind=self.engine))

    def unit(self, fn):
        """One request = one transaction on the thread's scoped session; deadlocks and lock waits re-run it."""
        for attempt in range(6):
            session = self.Session()
            try:
                result = fn(session)
                session.commit()
                return result
            except DBAPIError as e:
                session.rollback()
                code = e.orig.args[0] if e.orig is not None and e.orig.args else None
                if code in RETRYABLE and attempt < 5:
                    continue
                raise
            except BaseException:
                session.rollback()
                raise
            finally:
                self.Session.remove()

    def lock(self, s, ids):
        ids = sorted(set(ids))
        rows = s.execute(text("SELECT id, name, balance FROM accounts WHERE id IN :ids ORDER BY id FOR UPDATE"),
                         {"ids": tuple(ids)}).mappings().all()
        found = {r["id"]: r for r in rows}
        for i in ids:
            if i not in found:
                raise Refused("account_not_found", f"account {i} does not exist", account=i)
        return found

    def move(self, s, src, dst, amount, key):
        if amount > MAX_AMOUNT:
            raise Refused("amount_too_large", f"an amount is at most {MAX_AMOUNT}", limit=MAX_AMOUNT)
        accounts = self.lock(s, [a for a in (src, dst) if a is not None])
        if key is not None:
            prior = s.execute(text("SELECT id, src, dst, amount, idempotency_key FROM transfers "
                                   "WHERE idempotency_key = :k"), {"k": key}).mappings().first()
            if prior is not None:
                if (prior["src"], prior["dst"], prior["amount"]) == (src, dst, amount):  # key compared as bytes
                    return transfer_json(prior)
                raise Refused("idempotency_conflict", "this idempotency key was already used for a different request",
                              idempotencyKey=key)
        if src is not None and accounts[src]["balance"] < amount:
            bal = accounts[src]["balance"]
            raise Refused("insufficient_funds", f"account {src} has {bal}, cannot take {amount}", account=src,
                          balance=money(bal), amount=money(amount))
        if dst is not None and accounts[dst]["balance"] + amount > MAX_BALANCE:
            raise Refused("balance_overflow", f"account {dst} cannot hold more", account=dst)
        try:
            inserted = s.execute(text("INSERT INTO transfers (src, dst, amount, idempotency_key) "
                                      "VALUES (:s, :d, :a, :k)"), {"s": src, "d": dst, "a": amount, "k": key})
        except IntegrityError:
            raise Refused("idempotency_conflict", "this idempotency key was already used for a different request",
                          idempotencyKey=key)
        tid = inserted.lastrowid  # from the INSERT's OK packet, as the ledger does
        if src is not None and dst is not None:
            s.execute(text("UPDATE accounts SET balance = balance + CASE WHEN id = :s THEN -:a ELSE :a END "
                           "WHERE id IN (:s, :d)"), {"a": amount, "s": src, "d": dst})
        else:
            s.execute(text("UPDATE accounts SET balance = balance + :a WHERE id = :i"),
                      {"a": amount if src is None else -amount, "i": dst if src is None else src})
        kind = "deposit" if src is None else "withdrawal" if dst is None else "transfer"
        return {"id": tid, "kind": kind, "from": src, "to": dst, "amount": money(amount), "idempotencyKey": key}

    def create_account(self, s, name):
        if not isinstance(name, str) or not 1 <= len(name) <= 100:
            raise Refused("invalid_request", "name must be 1-100 characters")
        inserted = s.execute(text("INSERT INTO accounts (name, balance) VALUES (:n, 0)"), {"n": name})
        return {"id": inserted.lastrowid, "name": name, "balance": 0}

    def balance(self, s, account):
        row = s.execute(text("SELECT id, name, balance FROM accounts WHERE id = :i"), {"i": account}).mappings().first()
        if row is None:
            raise Refused("account_not_found", f"account {account} does not exist", account=account)
        return {"id": row["id"], "name": row["name"], "balance": money(row["balance"])}

    def op(self, s, name, req):
        key = req.get("idempotencyKey")
        if key is not None and (not isinstance(key, str) or not 1 <= len(key) <= 128):
            raise Refused("invalid_request", "idempotencyKey must be 1-128 characters")
        if name == "create_account":
            return self.create_account(s, req.get("name"))
        if name == "deposit":
            return self.move(s, None, to_int(req.get("account"), "account"), to_int(req.get("amount"), "amount"), key)
        if name == "withdraw":
            return self.move(s, to_int(req.get("account"), "account"), None, to_int(req.get("amount"), "amount"), key)
        if name == "transfer":
            src, dst = to_int(req.get("from"), "from"), to_int(req.get("to"), "to")
            if src == dst:
                raise Refused("invalid_request", "from and to must be different accounts")
            return self.move(s, src, dst, to_int(req.get("amount"), "amount"), key)
        if name == "balance":
            return self.balance(s, to_int(req.get("account"), "account"))
        raise Refused("unknown_operation", "unknown operation", op=name if isinstance(name, str) else None)

    def dispatch(self, name, req):
        if name == "batch":
            ops = req.get("ops")
            if not isinstance(ops, list) or not 1 <= len(ops) <= 100:
                raise Refused("invalid_request", "ops must be 1-100 operations")
            return self.unit(lambda s: {"results": [self.op(s, o.get("op"), o) for o in ops]})
        if name not in ("create_account", "deposit", "withdraw", "transfer", "balance"):
            raise Refused("unknown_operation", "unknown operation", op=name if isinstance(name, str) else None)
        return self.unit(lambda s: self.op(s, name, req))


def serve_client(ledger, token, conn):
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    reader = conn.makefile("rb")
    authenticated = False
    try:
        for raw in reader:
            if len(raw) > MAX_LINE:
                conn.sendall(b'{"id":null,"ok":false,"error":{"code":"line_too_long","message":"line too long"}}\n')
                continue
            rid = None
            try:
                req = json.loads(raw)
                if not isinstance(req, dict):
                    raise Refused("invalid_request", "a request must be a JSON object")
                rid = req.get("id") if isinstance(req.get("id"), (str, int)) else None
                name = req.get("op")
                if not authenticated:
                    presented = req.get("token")
                    if name == "auth" and isinstance(presented, str) and hmac.compare_digest(
                            presented.encode(), token.encode()):
                        authenticated = True
                        out = {"id": rid, "ok": True, "result": {"authenticated": True}}
                        conn.sendall((json.dumps(out) + "\n").encode())
                        continue
                    raise Refused("unauthorized", "authenticate first")
                out = {"id": rid, "ok": True, "result": ledger.dispatch(name, req)}
            except Refused as e:
                out = {"id": rid, "ok": False, "error": e.body}
            except ValueError:
                out = {"id": None, "ok": False, "error": {"code": "invalid_request", "message": "malformed JSON"}}
            except Exception as e:  # the database layer: details stay in the server log
                print(f"request failed: {e!r}", file=sys.stderr)
                out = {"id": rid, "ok": False, "error": {"code": "unavailable", "message": "try again later"}}
            conn.sendall((json.dumps(out) + "\n").encode())
            if not authenticated:
                break
    except OSError:
        pass
    finally:
        try:
            conn.close()
        except OSError:
            pass


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=7071)
    p.add_argument("--token", required=True)
    args = p.parse_args()
    ledger = Ledger(args.url)
    server = socket.create_server((args.host, args.port), backlog=512)
    print(f"reference ledger listening on {args.host}:{server.getsockname()[1]}", flush=True)
    while True:
        conn, _ = server.accept()
        threading.Thread(target=serve_client, args=(ledger, args.token, conn), daemon=True).start()


if __name__ == "__main__":
    main()
