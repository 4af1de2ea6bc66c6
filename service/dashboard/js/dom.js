// Element helpers. API text goes in as text nodes or attribute values, never parsed as markup.

const SVG_NS = "http://www.w3.org/2000/svg";

export const $ = (sel) => document.querySelector(sel);

function keep(c) {
  return c !== null && c !== undefined && c !== false;
}

function setAttrs(el, attrs) {
  for (const [name, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on")) el.addEventListener(name.slice(2), value);
    else if (name === "dataset") Object.assign(el.dataset, value);
    else el.setAttribute(name, value === true ? "" : String(value));
  }
}

/** An HTML element: h("p", {class: "muted"}, "text", child, [more], null). */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  setAttrs(el, attrs);
  el.append(...children.flat(Infinity).filter(keep));
  return el;
}

/** An SVG element, same arguments as h. */
export function s(tag, attrs = {}, ...children) {
  const el = document.createElementNS(SVG_NS, tag);
  setAttrs(el, attrs);
  el.append(...children.flat(Infinity).filter(keep));
  return el;
}

/** Replace an element's children. */
export function fill(el, ...children) {
  el.replaceChildren(...children.flat(Infinity).filter(keep));
}

export function badge(status) {
  return h("span", { class: `badge ${status}`, "data-status": status }, status);
}

export function stat(label, value) {
  return h("div", {}, h("dt", {}, label), h("dd", {}, String(value)));
}

export function progressBar(done, total, { indeterminate = false } = {}) {
  const bar = h("div", { class: `bar${indeterminate ? " indeterminate" : ""}` });
  const inner = h("div", { class: "fill" });
  inner.style.width = indeterminate ? "30%" : `${total ? Math.min(100, (100 * done) / total) : 0}%`;
  bar.append(inner);
  bar.setAttribute("role", "progressbar");
  if (!indeterminate) {
    bar.setAttribute("aria-valuemin", "0");
    bar.setAttribute("aria-valuemax", String(total));
    bar.setAttribute("aria-valuenow", String(done));
  }
  return bar;
}
