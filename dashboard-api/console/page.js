import { fill, h, problemBox } from './dom.js';

/** What every page is made of. The h1 takes focus after navigation, so keyboard and screen-reader users land on it. */
export const heading = (text) => h('h1', { tabindex: '-1' }, text);
export const section = (title, ...children) => h('section', { 'aria-label': title }, h('h2', {}, title), ...children);

/** Loads into `body`, dropping answers that arrive after the operator left the page. */
export async function loadInto(body, ctx, load) {
  try {
    const content = await load();
    if (ctx.current()) fill(body, content);
  } catch (error) {
    if (ctx.current()) fill(body, problemBox(error));
  }
}
