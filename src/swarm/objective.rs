//! Objectives of a particle swarm run: the standard test functions (rastrigin, rosenbrock,
//! sphere, ackley, griewank) or an expression of `x1…xn` written by the user.
//!
//! Expressions are parsed by `evalexpr` (a well-kept expression crate) and then checked
//! against a closed list of names: the variables `x1…xn` of the run, the constants `pi` and
//! `e`, and the pure mathematical functions. Anything else (an unknown variable, an
//! assignment, a string function, `random`) is refused before a task is recorded, so that a
//! stored expression always evaluates to a number or fails on the arithmetic alone.

use evalexpr::{
    build_operator_tree, ContextWithMutableVariables, DefaultNumericTypes, HashMapContext, Node,
    Value,
};

/// Longest expression accepted.
pub const MAX_EXPRESSION: usize = 2_000;

/// The standard test functions, by the name a task gives.
pub const FUNCTIONS: [&str; 5] = ["rastrigin", "rosenbrock", "sphere", "ackley", "griewank"];

/// Functions an expression may call: pure maths only.
const CALLABLE: &[&str] = &[
    "math::ln",
    "math::log",
    "math::log2",
    "math::log10",
    "math::exp",
    "math::exp2",
    "math::pow",
    "math::cos",
    "math::acos",
    "math::cosh",
    "math::acosh",
    "math::sin",
    "math::asin",
    "math::sinh",
    "math::asinh",
    "math::tan",
    "math::atan",
    "math::tanh",
    "math::atanh",
    "math::atan2",
    "math::sqrt",
    "math::cbrt",
    "math::hypot",
    "math::abs",
    "floor",
    "round",
    "ceil",
    "min",
    "max",
];

/// A checked objective, ready to evaluate.
#[derive(Debug, Clone)]
pub enum Objective {
    Rastrigin,
    Rosenbrock,
    Sphere,
    Ackley,
    Griewank,
    Expression(Box<Expression>),
}

/// A parsed expression and the variables it is evaluated with.
#[derive(Debug, Clone)]
pub struct Expression {
    tree: Node<DefaultNumericTypes>,
    names: Vec<String>,
}

impl Objective {
    /// Checks `text` for a run in `dimensions` variables: a test function's name, or an
    /// expression that parses and names only `x1…xn`, `pi`, `e` and mathematical functions.
    pub fn parse(text: &str, dimensions: u32) -> Result<Objective, String> {
        let trimmed = text.trim();
        match trimmed.to_ascii_lowercase().as_str() {
            "rastrigin" => return Ok(Objective::Rastrigin),
            "rosenbrock" if dimensions < 2 => {
                return Err("rosenbrock needs at least 2 dimensions".into())
            }
            "rosenbrock" => return Ok(Objective::Rosenbrock),
            "sphere" => return Ok(Objective::Sphere),
            "ackley" => return Ok(Objective::Ackley),
            "griewank" => return Ok(Objective::Griewank),
            _ => {}
        }
        if trimmed.is_empty() {
            return Err("must name a test function or be an expression of x1…xn".into());
        }
        if trimmed.chars().count() > MAX_EXPRESSION {
            return Err(format!("must be at most {MAX_EXPRESSION} characters"));
        }
        let tree = build_operator_tree::<DefaultNumericTypes>(trimmed)
            .map_err(|e| format!("is not a valid expression: {e}"))?;
        let names: Vec<String> = (1..=dimensions).map(|i| format!("x{i}")).collect();
        for name in tree.iter_variable_identifiers() {
            let known = name == "pi" || name == "e" || names.iter().any(|n| n == name);
            if !known {
                return Err(format!(
                    "uses the unknown name `{name}`; only x1…x{dimensions}, pi and e are known"
                ));
            }
        }
        if tree.iter_write_variable_identifiers().next().is_some() {
            return Err("must not assign variables".into());
        }
        if let Some(f) = tree
            .iter_function_identifiers()
            .find(|f| !CALLABLE.contains(f))
        {
            return Err(format!("calls the unknown function `{f}`"));
        }
        let expression = Expression { tree, names };
        // A constant string or boolean parses but is no objective: try it once.
        let probe = vec![0.5; dimensions as usize];
        match expression.eval(&probe) {
            Ok(_) => Ok(Objective::Expression(Box::new(expression))),
            Err(e) => Err(format!("does not evaluate to a number: {e}")),
        }
    }

    /// The cost at `x`. An expression that fails on some point (a logarithm of a negative
    /// number, say) costs +∞ there, and so does a NaN: the swarm moves away from it.
    pub fn cost(&self, x: &[f64]) -> f64 {
        use argmin_testfunctions as tf;
        let value = match self {
            Objective::Rastrigin => tf::rastrigin(x),
            Objective::Rosenbrock => tf::rosenbrock(x),
            Objective::Sphere => tf::sphere(x),
            Objective::Ackley => tf::ackley(x),
            Objective::Griewank => griewank(x),
            Objective::Expression(e) => e.eval(x).unwrap_or(f64::INFINITY),
        };
        if value.is_nan() {
            f64::INFINITY
        } else {
            value
        }
    }

    /// The known global minimum of a test function (all of them 0), if it has one.
    pub fn known_minimum(&self) -> Option<f64> {
        match self {
            Objective::Expression(_) => None,
            _ => Some(0.0),
        }
    }
}

/// Griewank: 1 + Σ xᵢ²/4000 − Π cos(xᵢ/√i), minimum 0 at the origin. argmin_testfunctions
/// has no n-dimensional version of it.
fn griewank(x: &[f64]) -> f64 {
    let sum: f64 = x.iter().map(|v| v * v).sum::<f64>() / 4000.0;
    let product: f64 = x
        .iter()
        .enumerate()
        .map(|(i, v)| (v / ((i + 1) as f64).sqrt()).cos())
        .product();
    1.0 + sum - product
}

impl Expression {
    fn eval(&self, x: &[f64]) -> Result<f64, String> {
        let mut context = HashMapContext::<DefaultNumericTypes>::new();
        let set = |c: &mut HashMapContext<DefaultNumericTypes>, name: &str, v: f64| {
            c.set_value(name.to_owned(), Value::Float(v))
                .map_err(|e| e.to_string())
        };
        set(&mut context, "pi", std::f64::consts::PI)?;
        set(&mut context, "e", std::f64::consts::E)?;
        for (name, v) in self.names.iter().zip(x) {
            set(&mut context, name, *v)?;
        }
        self.tree
            .eval_number_with_context(&context)
            .map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_functions_are_zero_at_their_minimum() {
        for name in FUNCTIONS {
            let f = Objective::parse(name, 3).unwrap();
            let at = if name == "rosenbrock" {
                vec![1.0; 3]
            } else {
                vec![0.0; 3]
            };
            assert!(f.cost(&at).abs() < 1e-9, "{name}: {}", f.cost(&at));
            assert!(
                f.cost(&[0.7, -1.3, 2.1]) > 0.0,
                "{name} is positive elsewhere"
            );
        }
    }

    #[test]
    fn an_expression_of_the_runs_variables_is_evaluated() {
        let f = Objective::parse("(x1 - 1)^2 + math::abs(x2) + pi * 0", 2).unwrap();
        assert!((f.cost(&[1.0, -2.0]) - 2.0).abs() < 1e-12);
        assert!((f.cost(&[3.0, 0.0]) - 4.0).abs() < 1e-12);
    }

    #[test]
    fn unknown_names_assignments_and_garbage_are_refused() {
        assert!(Objective::parse("x1 + x3", 2).unwrap_err().contains("`x3`"));
        assert!(Objective::parse("x1 + y", 2).unwrap_err().contains("`y`"));
        assert!(Objective::parse("x1 = 3; x1", 1).is_err());
        assert!(Objective::parse("random()", 1)
            .unwrap_err()
            .contains("random"));
        assert!(Objective::parse("str::trim(\"a\")", 1).is_err());
        assert!(Objective::parse("(x1 + 2", 1)
            .unwrap_err()
            .contains("valid"));
        assert!(Objective::parse("\"text\"", 1).is_err());
        assert!(Objective::parse("", 1).is_err());
        assert!(Objective::parse("rosenbrock", 1).is_err());
    }

    #[test]
    fn a_point_where_the_expression_fails_costs_infinity() {
        let f = Objective::parse("math::ln(x1)", 1).unwrap();
        assert_eq!(f.cost(&[-1.0]), f64::INFINITY);
    }
}
