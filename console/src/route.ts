import { useEffect, useState } from "preact/hooks";

/**
 * Pages live in the URL's fragment (#/carves?status=receiving, #/carves/<id>, #/audit): bookmarkable, never sent
 * to the server, and never holding the token.
 */
export type Route =
  | { page: "carves"; params: URLSearchParams }
  | { page: "carve"; carveId: string }
  | { page: "audit"; params: URLSearchParams }
  | { page: "unknown"; path: string };

export function parseRoute(hash: string): Route {
  const raw = hash.replace(/^#/, "");
  const [pathPart = "", queryPart = ""] = raw.split("?", 2);
  const path = pathPart.replace(/\/+$/, "") || "/carves";
  const params = new URLSearchParams(queryPart);
  if (path === "/carves") return { page: "carves", params };
  if (path === "/audit") return { page: "audit", params };
  const carve = /^\/carves\/([^/]+)$/.exec(path);
  if (carve?.[1]) return { page: "carve", carveId: decodeURIComponent(carve[1]) };
  return { page: "unknown", path };
}

/** The fragment of a page, with its filters (empty values left out). */
export function href(path: string, params: Record<string, string | undefined> = {}): string {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== "") q.set(k, v);
  const s = q.toString();
  return `#${path}${s ? `?${s}` : ""}`;
}

export const carveHref = (carveId: string): string => `#/carves/${encodeURIComponent(carveId)}`;

export function navigate(to: string): void {
  location.hash = to.replace(/^#/, "");
}

export function useRoute(): Route {
  const [route, setRoute] = useState(() => parseRoute(location.hash));
  useEffect(() => {
    const changed = (): void => setRoute(parseRoute(location.hash));
    addEventListener("hashchange", changed);
    return () => removeEventListener("hashchange", changed);
  }, []);
  return route;
}
