// The access token: `streamseg serve` prints http://127.0.0.1:8000/#token=...; the
// fragment never reaches the server (nor its logs). It is kept in sessionStorage (this
// tab only) and removed from the address bar, then sent as `Authorization: Bearer` on
// REST calls and the WebRTC offer, and as a websocket subprotocol (browsers cannot set
// headers on a websocket).
const KEY = "streamseg.token";

function takeTokenFromFragment() {
  const fragment = new URLSearchParams(location.hash.slice(1));
  const token = fragment.get("token");
  if (!token) return;
  try {
    sessionStorage.setItem(KEY, token);
  } catch {
    // storage disabled: the token lives in this page only
  }
  fragment.delete("token");
  const rest = fragment.toString();
  history.replaceState(null, "", location.pathname + location.search + (rest ? `#${rest}` : ""));
  return token;
}

const fromFragment = takeTokenFromFragment();

export function token() {
  try {
    return fromFragment || sessionStorage.getItem(KEY);
  } catch {
    return fromFragment || null;
  }
}

export function authHeaders(headers = {}) {
  const t = token();
  return t ? { ...headers, authorization: `Bearer ${t}` } : headers;
}

export class AuthError extends Error {}

// fetch() with the token. A 401/403 becomes an AuthError that says what to do
// (retrying would not help).
export async function authFetch(path, init = {}) {
  const response = await fetch(path, { ...init, headers: authHeaders(init.headers || {}) });
  if (response.status === 401) {
    throw new AuthError(
      "This page needs the access token: open the URL `streamseg serve` printed " +
        "(it ends in #token=…).",
    );
  }
  if (response.status === 403) {
    const detail = (await response.json().catch(() => ({}))).detail;
    throw new AuthError(detail?.message || "the token is not allowed to do this");
  }
  return response;
}

// A websocket to this server carrying the token (docs/PROTOCOL.md, "Authentication").
export function openSocket(path) {
  const url = new URL(path, location.href);
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  const t = token();
  return new WebSocket(url, t ? ["streamseg.v1", `streamseg.bearer.${t}`] : ["streamseg.v1"]);
}
