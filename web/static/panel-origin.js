// sobot-panel: where the panel may listen and post (PANEL_HOST_ORIGINS), and its own signed URL.

// `https://*.sobot.com` matches any subdomain (not the bare domain); `http://127.0.0.1:*` any port.
function patternToRegExp(pattern) {
  const [scheme, rest] = pattern.split("://");
  const [host, port] = rest.split(/:(?=[^:]*$)/);
  const esc = (s) => s.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
  const hostRe = host.startsWith("*.") ? "(?:[a-z0-9-]+\\.)+" + esc(host.slice(2)) : esc(host);
  let portRe = port === undefined ? "" : port === "*" ? ":\\d{1,5}" : ":" + esc(port);
  if (rest.indexOf(":") === -1) portRe = "";
  return new RegExp("^" + esc(scheme) + "://" + hostRe + portRe + "$", "i");
}

export function originMatcher(patterns, allowSelf) {
  const res = (patterns || []).map(patternToRegExp);
  return (origin) => {
    if (!origin || origin === "null") return false;
    if (allowSelf && origin === location.origin) return true;
    return res.some((re) => re.test(origin));
  };
}

export function initialParentOrigin(originAllowed) {
  if (window.parent === window) return null;
  const candidates = [];
  if (location.ancestorOrigins && location.ancestorOrigins.length) candidates.push(location.ancestorOrigins[0]);
  if (document.referrer) {
    try { candidates.push(new URL(document.referrer).origin); } catch (e) { /* not a URL */ }
  }
  return candidates.find(originAllowed) || null;
}

// This page for a relayed query: encodeURIComponent, as Sobot builds it (a `+` stays a plus).
export function signedUrl(query, lang) {
  const pairs = Object.entries(query || {}).map(
    ([k, v]) => encodeURIComponent(k) + "=" + encodeURIComponent(v === null ? "" : String(v)));
  return location.origin + location.pathname + "?" + pairs.join("&") + "&lang=" + encodeURIComponent(lang || "zh");
}

// Whether a sign made at `at` (ms) still verifies, by the server's clock, with a margin for the round trip.
export function signStillValid(at, maxAgeS, skewMs) {
  if (typeof at !== "number") return false;
  return Date.now() + skewMs < at + (maxAgeS || 300) * 1000 - 15000;
}
