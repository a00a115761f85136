# Gold-standard values for the engine: lme4 fits and lmerTest Satterthwaite tests of
# every voxel of the reference data sets (tests/reference/data, from make_data.py).
#
# Usage (from the repository root):
#   Rscript tests/reference/lme4_reference.R [DATA_DIR [OUT_DIR]]
#   Rscript tests/reference/lme4_reference.R --check [DATA_DIR]
#
# Writes OUT_DIR/{case}_{REML,ML}.csv (one row per voxel) and OUT_DIR/versions.csv.
# Defaults: DATA_DIR = tests/reference/data, OUT_DIR = tests/reference/results, both
# next to this script.  --check refits everything with a second, independent and even
# tighter optimizer setting (minqa's bobyqa, rhoend 1e-14) and prints the largest
# relative difference per quantity, to show the committed numbers are converged.
#
# Conventions of the output (those of the engine, blmm_scripts):
#   beta_j           fixef, in the order of the design columns x0, x1, ...
#   sigma2           sigma(fit)^2 (REML or ML estimate, as fitted)
#   D_j              vech(D_1), ..., vech(D_r), D_k = VarCorr block of factor k / sigma2,
#                    factors in the order of the f_* columns of the design, vech the
#                    column-wise lower triangle: (0,0), (1,0), (1,1) for q_k = 2
#   Dse_j            standard error of D_j: sqrt of the diagonal of the inverse of half
#                    the Hessian of the deviance in vech(D) (sigma profiled), NA when
#                    singular; the tests use it as the scale of D entries near 0
#   logLik           as.numeric(logLik(fit)), REML or ML, all constants
#   vcov_i_j         vcov(fit), row-major
#   isSingular       lme4::isSingular(fit) (tol 1e-4 on the diagonal of lme4's theta)
#   thetamin_<f>     smallest diagonal entry of factor f's relative Cholesky factor
#   <T>_est/_se/_df/_t   lmerTest::contest1D(fit, L, ddf = "Satterthwaite")
#   <F>_F/_ndf/_ddf      lmerTest::contestMD(fit, L, ddf = "Satterthwaite")
#   start            theta start of the kept fit (see fit_voxel)
#   polish           outcome of the Newton polish (see make_polisher)
#   warnings         any warning raised,
#                    plus lme4's convergence messages (singular fits say so here)

suppressPackageStartupMessages({
  library(lme4)
  library(lmerTest)
})

script_dir <- local({
  a <- commandArgs(trailingOnly = FALSE)
  f <- sub("^--file=", "", a[grepl("^--file=", a)])
  if (length(f)) dirname(normalizePath(f[1])) else getwd()
})

args <- commandArgs(trailingOnly = TRUE)
check <- "--check" %in% args
args <- args[args != "--check"]
data_dir <- if (length(args) >= 1) args[1] else file.path(script_dir, "data")
out_dir <- if (length(args) >= 2) args[2] else file.path(script_dir, "results")

CASES <- c("intercept", "slope", "crossed", "crossed_slope")

# Tight convergence: BOBYQA through nloptr with absolute tolerances far below the
# defaults (xtol_abs 1e-8 relative to theta ~ 1, ftol_abs 1e-8 on the deviance), so
# that theta, and everything computed from it, is good to ~1e-7 relative or better.
OPT_CTRL <- list(
  algorithm = "NLOPT_LN_BOBYQA", xtol_abs = 1e-12, ftol_abs = 1e-14,
  xtol_rel = 0, ftol_rel = 0, maxeval = 1e5
)
CONTROL <- lmerControl(optimizer = "nloptwrap", optCtrl = OPT_CTRL)
# An independent optimizer for --check: minqa's own bobyqa with a tiny final trust radius.
CHECK_CONTROL <- lmerControl(optimizer = "bobyqa", optCtrl = list(rhoend = 1e-14, maxfun = 1e5))

# Derivative-free optimizers find theta only to about sqrt(ftol / curvature): where
# the deviance is flat in theta (a small variance: D depends on theta squared), two
# tight BOBYQA runs still differ by up to ~1e-4 relative in D.  The engine estimates D
# itself, so every non-singular fit is polished by Newton steps on the profiled deviance
# as a function of vech(D_k) = vech(Lambda_k Lambda_k') (numDeriv's Richardson gradient
# and Hessian), until the step is below 1e-10 relative; a step is only taken if it does
# not raise the deviance.  Singular fits (a diagonal theta below 1e-4, lme4's
# isSingular criterion) are left where lme4 put them.
make_polisher <- function(qs) {
  blocks <- split(seq_len(sum(qs * (qs + 1) / 2)), rep(seq_along(qs), qs * (qs + 1) / 2))
  to_mat <- function(v, q) {
    L <- matrix(0, q, q)
    L[lower.tri(L, diag = TRUE)] <- v
    L
  }
  theta_to_phi <- function(th) {
    unlist(lapply(seq_along(qs), function(k) {
      L <- to_mat(th[blocks[[k]]], qs[k])
      D <- L %*% t(L)
      D[lower.tri(D, diag = TRUE)]
    }))
  }
  phi_to_theta <- function(phi) {
    unlist(lapply(seq_along(qs), function(k) {
      D <- to_mat(phi[blocks[[k]]], qs[k])
      D <- D + t(D) - diag(diag(D), qs[k])
      R <- tryCatch(chol(D), error = function(e) NULL)
      if (is.null(R)) return(rep(NA_real_, length(blocks[[k]])))
      L <- t(R)
      L[lower.tri(L, diag = TRUE)]
    }))
  }
  state <- new.env()
  state$H <- NULL
  opt <- function(par, fn, lower, upper, control = list(), ...) {
    diag_idx <- which(lower == 0)
    msg <- "not polished (singular)"
    if (min(par[diag_idx]) > 1e-4) {
      g <- function(phi) {
        th <- phi_to_theta(phi)
        if (anyNA(th)) Inf else fn(th)
      }
      phi <- theta_to_phi(par)
      msg <- "polished"
      # Derivatives are taken in scaled coordinates u (phi = phi0 + h * u, at u = 0),
      # each entry moving by its own step h_j: numDeriv's default relative steps are
      # tiny for an entry near 0 and turn rounding noise (~1e-12 in the deviance) into
      # derivative noise.  First pass: h = 1e-3 x the entry's scale (|D_ii| on the
      # diagonal, sqrt(D_ii D_jj) off it); with the standard errors from that Hessian,
      # h = min(1e-3 SE, 1e-2 scale) (the second bound keeps D positive definite).
      # Richardson extrapolation then uses h, h/2, h/4, h/8.
      value_scale <- function(phi) {
        unlist(lapply(seq_along(qs), function(k) {
          dg <- diag(to_mat(phi[blocks[[k]]], qs[k]))
          S <- sqrt(outer(dg, dg))
          S[lower.tri(S, diag = TRUE)]
        }))
      }
      derivs_with <- function(phi, h) {
        gu <- function(u) g(phi + h * u)
        u0 <- rep(0, length(phi))
        args <- list(eps = 1, d = 1, r = 4)
        list(
          gr = numDeriv::grad(gu, u0, method.args = args) / h,
          H = numDeriv::hessian(gu, u0, method.args = args) / outer(h, h)
        )
      }
      scaled_derivs <- function(phi) {
        sc <- value_scale(phi)
        dd <- derivs_with(phi, 1e-3 * sc)
        V <- tryCatch(solve(dd$H / 2), error = function(e) NULL)
        if (is.null(V) || any(!is.finite(diag(V))) || any(diag(V) <= 0)) return(dd)
        derivs_with(phi, pmin(1e-3 * sqrt(diag(V)), 1e-2 * sc))
      }
      for (it in 1:20) {
        dd <- scaled_derivs(phi)
        gr <- dd$gr
        H <- dd$H
        step <- tryCatch(-solve(H, gr), error = function(e) NULL)
        if (is.null(step) || any(!is.finite(step))) {
          msg <- "polish stopped: singular Hessian"
          break
        }
        f0 <- g(phi)
        t <- 1
        while (t > 1e-6 && !(g(phi + t * step) <= f0)) t <- t / 2
        if (t <= 1e-6) break
        phi <- phi + t * step
        if (max(abs(t * step) / pmax(abs(phi), 1e-8)) < 1e-10) break
      }
      par <- phi_to_theta(phi)
      msg <- sprintf("%s, %d Newton steps", msg, it)
      state$H <- scaled_derivs(phi)$H
    }
    list(par = par, fval = fn(par), conv = 0, message = msg, feval = NA)
  }
  list(opt = opt, state = state)
}

fmt <- function(x) {
  if (is.character(x) || is.logical(x)) return(as.character(x))
  sprintf("%.17g", x)
}

vech <- function(A) {
  q <- nrow(A)
  unlist(lapply(seq_len(q), function(j) A[j:q, j]))
}

read_case <- function(case) {
  design <- read.csv(file.path(data_dir, paste0(case, "_design.csv")),
                     stringsAsFactors = FALSE)
  Y <- read.csv(file.path(data_dir, paste0(case, "_Y.csv")))
  con <- read.csv(file.path(data_dir, "contrasts.csv"), stringsAsFactors = FALSE,
                  colClasses = c(case = "character", name = "character", type = "character"))
  con <- con[con$case == case, ]
  xcols <- grep("^x[0-9]+$", names(design), value = TRUE)
  fcols <- grep("^f_", names(design), value = TRUE)
  factors <- sub("^f_", "", fcols)
  zcols <- lapply(factors, function(f) grep(paste0("^z_", f, "_[0-9]+$"), names(design),
                                             value = TRUE))
  names(zcols) <- factors
  re <- vapply(factors, function(f) {
    sprintf("(0 + %s | f_%s)", paste(zcols[[f]], collapse = " + "), f)
  }, "")
  form <- as.formula(paste("y ~ 0 +", paste(xcols, collapse = " + "), "+",
                           paste(re, collapse = " + ")))
  ccols <- grep("^c[0-9]+$", names(con), value = TRUE)
  contrasts <- lapply(split(con, factor(con$name, levels = unique(con$name))), function(d) {
    list(type = d$type[1], L = as.matrix(d[order(d$row), ccols, drop = FALSE]))
  })
  list(design = design, Y = Y, xcols = xcols, factors = factors, zcols = zcols,
       formula = form, contrasts = contrasts)
}

# Fit one voxel.  lme4's optimizer can stop at a non-optimal point on the boundary of
# the theta space (seen here: crossed_slope voxel 3, REML, stuck at a zero subject
# intercept with logLik -288.633 while -287.498 is attainable).  A gold standard must be
# the maximum, so every model with a correlation parameter is also fitted from two more
# starts (off-diagonal theta +0.5 and -0.5, diagonal 1) and the fit with the highest
# logLik is kept; another start replaces the default one only if it gains more than 1e-7.
fit_voxel <- function(cs, v, reml, control) {
  y <- cs$Y[[v]]
  keep <- !is.na(y)
  d <- cs$design[keep, , drop = FALSE]
  d$y <- y[keep]
  for (f in cs$factors) {
    col <- paste0("f_", f)
    d[[col]] <- factor(as.character(d[[col]]))  # levels present at this voxel, sorted
  }
  one <- function(start, ctl = control) {
    warns <- character(0)
    fit <- withCallingHandlers(
      suppressMessages(
        lmerTest::lmer(cs$formula, data = d, REML = reml, control = ctl, start = start)
      ),
      warning = function(w) {
        warns <<- c(warns, conditionMessage(w))
        invokeRestart("muffleWarning")
      }
    )
    list(fit = fit, n = sum(keep), warns = warns)
  }
  best <- one(NULL)
  best$start <- "default"
  lower <- getME(best$fit, "lower")
  if (any(lower != 0)) {
    for (s in c(0.5, -0.5)) {
      cand <- one(list(theta = ifelse(lower == 0, 1, s)))
      if (as.numeric(logLik(cand$fit)) > as.numeric(logLik(best$fit)) + 1e-7) {
        best <- cand
        best$start <- sprintf("offdiag=%g", s)
      }
    }
  }
  # Newton polish (see make_polisher), starting from the best fit
  cnms <- getME(best$fit, "cnms")
  qs <- lengths(cnms)
  polisher <- make_polisher(qs)
  pol <- one(list(theta = getME(best$fit, "theta")),
             ctl = lmerControl(optimizer = polisher$opt, calc.derivs = TRUE))
  # Standard errors of vech(D) (inverse Hessian of the deviance / 2 in vech(D), sigma
  # profiled), in the factor order of the design; NA for singular fits.
  H <- polisher$state$H
  se <- if (is.null(H)) rep(NA_real_, sum(qs * (qs + 1) / 2)) else sqrt(diag(solve(H / 2)))
  se_blocks <- split(se, rep(names(cnms), qs * (qs + 1) / 2))
  pol$Dse <- unlist(lapply(paste0("f_", cs$factors), function(f) se_blocks[[f]]))
  gain <- as.numeric(logLik(pol$fit)) - as.numeric(logLik(best$fit))
  if (gain < -1e-9) stop(sprintf("polishing lowered the logLik by %g", -gain))
  pol$start <- best$start
  pol$polish <- pol$fit@optinfo$message
  pol
}

summarise_voxel <- function(cs, fv, voxel) {
  fit <- fv$fit
  warns <- fv$warns
  s2 <- sigma(fit)^2
  beta <- fixef(fit)[cs$xcols]
  vc <- VarCorr(fit)
  tl <- getME(fit, "Tlist")
  D <- unlist(lapply(cs$factors, function(f) {
    vb <- as.matrix(vc[[paste0("f_", f)]])
    attr(vb, "stddev") <- NULL
    attr(vb, "correlation") <- NULL
    vech(unname(vb) / s2)
  }))
  thmin <- vapply(cs$factors, function(f) min(diag(tl[[paste0("f_", f)]])), 0)
  V <- as.matrix(vcov(fit))[cs$xcols, cs$xcols]
  out <- list(voxel = voxel, n = fv$n, start = fv$start, polish = fv$polish,
              isSingular = isSingular(fit))
  for (k in seq_along(cs$factors)) out[[paste0("thetamin_", cs$factors[k])]] <- thmin[[k]]
  out$logLik <- as.numeric(logLik(fit))
  for (j in seq_along(beta)) out[[sprintf("beta_%d", j - 1)]] <- unname(beta[j])
  out$sigma2 <- s2
  for (j in seq_along(D)) out[[sprintf("D_%d", j - 1)]] <- D[j]
  for (j in seq_along(D)) out[[sprintf("Dse_%d", j - 1)]] <- fv$Dse[j]
  p <- length(beta)
  for (i in seq_len(p)) for (j in seq_len(p)) out[[sprintf("vcov_%d_%d", i - 1, j - 1)]] <- V[i, j]
  for (nm in names(cs$contrasts)) {
    cn <- cs$contrasts[[nm]]
    L <- cn$L
    colnames(L) <- NULL
    res <- withCallingHandlers(
      if (cn$type == "T") {
        contest1D(fit, drop(L), ddf = "Satterthwaite")
      } else {
        contestMD(fit, L, ddf = "Satterthwaite")
      },
      warning = function(w) {
        warns <<- c(warns, conditionMessage(w))
        invokeRestart("muffleWarning")
      }
    )
    if (cn$type == "T") {
      out[[paste0(nm, "_est")]] <- res[["Estimate"]]
      out[[paste0(nm, "_se")]] <- res[["Std. Error"]]
      out[[paste0(nm, "_df")]] <- res[["df"]]
      out[[paste0(nm, "_t")]] <- res[["t value"]]
    } else {
      out[[paste0(nm, "_F")]] <- res[["F value"]]
      out[[paste0(nm, "_ndf")]] <- res[["NumDF"]]
      out[[paste0(nm, "_ddf")]] <- res[["DenDF"]]
    }
  }
  msgs <- c(warns, unlist(fit@optinfo$conv$lme4$messages))
  out$warnings <- if (length(msgs)) paste(unique(gsub("[\r\n,]+", " ", msgs)), collapse = " | ") else ""
  out
}

run_case <- function(case, reml, control) {
  cs <- read_case(case)
  rows <- lapply(seq_along(cs$Y), function(v) {
    summarise_voxel(cs, fit_voxel(cs, v, reml, control), v - 1)
  })
  as.data.frame(do.call(rbind, lapply(rows, function(r) as.data.frame(r, check.names = FALSE))),
                check.names = FALSE)
}

write_frame <- function(df, path) {
  out <- as.data.frame(lapply(df, fmt), check.names = FALSE, stringsAsFactors = FALSE)
  write.csv(out, path, row.names = FALSE, quote = TRUE)
}

if (check) {
  # Relative differences between the two optimizers; entries near 0 are measured against
  # a scale: beta_j and contrast estimates against their SE, off-diagonal D against
  # sqrt(D_ii D_jj), everything else against its own magnitude.
  for (case in CASES) for (reml in c(TRUE, FALSE)) {
    a <- run_case(case, reml, CONTROL)
    b <- run_case(case, reml, CHECK_CONTROL)
    cols <- setdiff(names(a)[vapply(a, is.numeric, TRUE)],
                    c("voxel", "n", grep("^thetamin", names(a), value = TRUE)))
    scale_of <- function(cl) {
      if (grepl("^beta_", cl)) {
        j <- sub("^beta_", "", cl)
        return(sqrt(a[[sprintf("vcov_%s_%s", j, j)]]))
      }
      if (grepl("_est$", cl)) return(a[[sub("_est$", "_se", cl)]])
      if (grepl("^vcov_", cl)) {
        ij <- strsplit(sub("^vcov_", "", cl), "_")[[1]]
        return(sqrt(a[[sprintf("vcov_%s_%s", ij[1], ij[1])]] * a[[sprintf("vcov_%s_%s", ij[2], ij[2])]]))
      }
      abs(a[[cl]])
    }
    ok <- !a$isSingular
    rel <- vapply(cols, function(cl) max(abs(a[[cl]] - b[[cl]])[ok] / scale_of(cl)[ok]), 0)
    dcols <- grep("^D_[0-9]", cols, value = TRUE)
    # off-diagonal D entries against sqrt(D_ii D_jj) (a correlation-scale difference)
    cs <- read_case(case)
    off <- 0
    for (f in cs$factors) {
      q <- length(cs$zcols[[f]])
      pos <- matrix(0, q, q)
      pos[lower.tri(pos, diag = TRUE)] <- off + seq_len(q * (q + 1) / 2) - 1
      for (j in seq_len(q)) for (i in j:q) if (i != j) {
        dij <- sprintf("D_%d", pos[i, j])
        sc <- sqrt(a[[sprintf("D_%d", pos[i, i])]] * a[[sprintf("D_%d", pos[j, j])]])
        rel[[dij]] <- max(abs(a[[dij]] - b[[dij]])[ok] / sc[ok])
      }
      off <- off + q * (q + 1) / 2
    }
    main <- rel[!grepl("^Dse_", names(rel))]
    secols <- grep("^Dse_", names(rel), value = TRUE)
    cat(sprintf(paste("%-14s %-4s regular fits: max rel diff %.1e (%s); D: %s; Dse: %s;",
                      "logLik diff, all fits: %.1e\n"),
                case, if (reml) "REML" else "ML", max(main), names(which.max(main)),
                paste(sprintf("%.1e", rel[dcols]), collapse = " "),
                paste(sprintf("%.1e", rel[secols]), collapse = " "),
                max(abs(a$logLik - b$logLik))))
  }
  quit(status = 0)
}

dir.create(out_dir, showWarnings = FALSE, recursive = TRUE)
for (case in CASES) for (reml in c(TRUE, FALSE)) {
  res <- run_case(case, reml, CONTROL)
  write_frame(res, file.path(out_dir, sprintf("%s_%s.csv", case, if (reml) "REML" else "ML")))
}

pkgs <- c("lme4", "lmerTest", "Matrix", "nloptr", "minqa", "numDeriv")
versions <- data.frame(
  key = c("R", pkgs, "optimizer", "optCtrl", "isSingular_tol", "ddf"),
  value = c(
    R.version.string,
    vapply(pkgs, function(p) as.character(packageVersion(p)), ""),
    "nloptwrap",
    paste(names(OPT_CTRL), vapply(OPT_CTRL, as.character, ""), sep = "=", collapse = "; "),
    "1e-4",
    "Satterthwaite (lmerTest contest1D / contestMD)"
  )
)
write.csv(versions, file.path(out_dir, "versions.csv"), row.names = FALSE)
