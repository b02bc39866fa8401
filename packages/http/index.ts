/** @vessel/http: the router and the HTTP error the API server and the agent share. */
export { Router, RouterPatternError, type Match, type Method, type Params } from './router.ts';
export { HttpError } from './errors.ts';
