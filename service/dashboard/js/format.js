// Numbers, times and names as the page shows them.

export function fmt(x, digits = 4) {
  if (x === null || x === undefined || Number.isNaN(x)) return "–";
  if (x === 0) return "0";
  const a = Math.abs(x);
  if (a >= 1e5 || a < 1e-3) return x.toExponential(digits - 1);
  return String(Number(x.toPrecision(digits)));
}

export function pct(x) {
  return x === null || x === undefined ? "–" : `${Number((x * 100).toFixed(2))}%`;
}

export function duration(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  const sec = Math.max(0, Math.round(seconds));
  if (sec < 60) return `${sec} s`;
  const m = Math.floor(sec / 60);
  if (m < 60) return `${m} min ${sec % 60} s`;
  return `${Math.floor(m / 60)} h ${m % 60} min`;
}

export function when(iso) {
  if (!iso) return "–";
  const d = new Date(iso);
  return d.toLocaleString(undefined, { dateStyle: "medium", timeStyle: "medium" });
}

export function ago(iso) {
  const sec = (Date.now() - new Date(iso).getTime()) / 1000;
  if (sec < 60) return "just now";
  if (sec < 3600) return `${Math.floor(sec / 60)} min ago`;
  if (sec < 86400) return `${Math.floor(sec / 3600)} h ago`;
  return new Date(iso).toLocaleDateString();
}

export function bytes(n) {
  if (n === null || n === undefined) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  let v = n;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i += 1;
  }
  return `${i === 0 ? v : v.toFixed(1)} ${units[i]}`;
}

export function modelLabel(model) {
  // An HF folder path is long; its last component names it well enough in a list.
  const parts = model.split(/[\\/]/).filter(Boolean);
  return parts.length > 1 ? `…/${parts.slice(-2).join("/")}` : model;
}

/** A request's target sparsity: explicit, else N:M's share, else 0.5. */
export function target(request) {
  if (request.sparsity !== null && request.sparsity !== undefined) return request.sparsity;
  const nm = /^(\d+):(\d+)$/.exec(request.pattern ?? "");
  return nm ? Number(nm[1]) / Number(nm[2]) : 0.5;
}
