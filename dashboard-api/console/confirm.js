import { fill } from './dom.js';

/**
 * Asks before something that cannot be taken back. A modal <dialog>: focus moves into it, Tab stays
 * inside, Escape cancels. `fields` are extra controls (a reason); `check()` may refuse to confirm
 * with a message. Resolves true on confirm, false on cancel.
 */
export function confirmAction({ title, text, action, fields = [], check = () => null }) {
  const dialog = document.querySelector('dialog.confirm');
  fill(dialog.querySelector('#confirm-title'), title);
  fill(dialog.querySelector('.confirm-text'), text);
  fill(dialog.querySelector('.confirm-fields'), fields);
  const button = dialog.querySelector('.confirm-button');
  button.textContent = action;
  const form = dialog.querySelector('form');
  return new Promise((resolve) => {
    const onSubmit = (event) => {
      if (event.submitter?.value !== 'confirm') return;
      const refusal = check();
      if (refusal) {
        event.preventDefault();
        refusal.focus?.();
      }
    };
    form.addEventListener('submit', onSubmit);
    dialog.addEventListener(
      'close',
      () => {
        form.removeEventListener('submit', onSubmit);
        resolve(dialog.returnValue === 'confirm');
      },
      { once: true },
    );
    dialog.returnValue = 'cancel';
    dialog.showModal();
    (dialog.querySelector('.confirm-fields select, .confirm-fields input') ?? dialog.querySelector('button.secondary')).focus();
  });
}
